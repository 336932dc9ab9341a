-- depends_on: {{ ref('int_touched_users') }}
{% set d = delta() %}
with activity as (
    select
        user_id,
        count(*) as n_events,
        count(*) filter (where split = 'train') as n_train_events,
        min(ts) as first_ts,
        max(ts) as last_ts
    from {{ ref('splits') }}
    group by user_id
),

profiles as (
    select
        a.user_id,
        u.age,
        u.gender,
        u.occupation,
        u.zip,
        coalesce(u.attributes, '{}')::json as attributes,
        a.n_events,
        a.n_train_events,
        a.first_ts,
        a.last_ts
    from activity as a
    left join {{ ref('stg_users') }} as u using (user_id)
    {% if d %}
        -- an incremental build's splits hold the touched users; the others keep their published row (a
        -- daily drop adds events only: the users table is as it was when that row was built)
        union all by name
        select user_id, age, gender, occupation, zip, attributes, n_events, n_train_events, first_ts, last_ts
        from {{ d.published_schema }}.user_profiles
        where user_id not in (select user_id from {{ ref('int_touched_users') }})
    {% endif %}
)

select
    user_id,
    row_number() over (order by try_cast(user_id as bigint) nulls last, user_id) - 1 as user_idx,
    age,
    gender,
    occupation,
    zip,
    attributes,
    n_events,
    n_train_events,
    first_ts,
    last_ts
from profiles
order by user_idx
