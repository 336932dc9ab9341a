-- One row per user with events. Built from the user's own rows only (no rank over all users), so an
-- incremental build emits the touched users' rows and publish replaces exactly those (a per-user mart,
-- orchestration PER_USER_MARTS); the models' dense user index is numbered when the marts are read
-- (m6rec.data.marts.USER_ORDER), not stored, so a new user does not renumber every published row.
with activity as (
    select
        user_id,
        count(*) as n_events,
        count(*) filter (where split = 'train') as n_train_events,
        min(ts) as first_ts,
        max(ts) as last_ts
    from {{ ref('splits') }}
    group by user_id
)

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
order by a.user_id
