-- depends_on: {{ ref('int_touched_users') }}
with train_stats as (
    select
        item_id,
        count(*) as n_train,
        count(*) filter (where is_like) as n_train_likes,
        avg(rating) as mean_train_rating,
        min(ts) as first_train_ts,
        max(ts) as last_train_ts
    from {{ as_published('splits') }}
    where split = 'train'
    group by item_id
),

-- "Often watched next": for item a, the items b that came within the next `watched_next_window` train
-- events of the same user (item_transitions), at least `watched_next_min_count` times, best by count /
-- sqrt(b's train popularity) (so that blockbusters do not follow everything). Collaborative signal the
-- text can say.
transitions as (
    select item_id, next_item_id, n
    from {{ as_published_by_key('item_transitions', ['item_id', 'next_item_id'], 'n > 0') }}
    where n >= {{ var('watched_next_min_count') }}
),

-- each item's best `watched_next_count` followers, best first (equal scores in id order)
watched_next as (
    {%- if var('watched_next_count') | int > 0 %}
        select
            t.item_id,
            min_by(
                t.next_item_id,
                {'score': -(t.n / sqrt(s.n_train)), 'next_item_id': t.next_item_id},
                {{ var('watched_next_count') | int }}
            ) as watched_next_ids
        from transitions as t
        inner join train_stats as s on t.next_item_id = s.item_id
        group by t.item_id
    {%- else %}
        select item_id, []::varchar [] as watched_next_ids from transitions where false
    {%- endif %}
),

ranked as (
    select
        i.item_id,
        i.title,
        i.release_year,
        i.genres,
        i.attributes,
        coalesce(t.n_train, 0) as n_train_interactions,
        coalesce(t.n_train_likes, 0) as n_train_likes,
        t.mean_train_rating,
        t.first_train_ts,
        t.last_train_ts,
        c.item_id is not null as is_cold,
        coalesce(w.watched_next_ids, []::varchar []) as watched_next_ids,
        rank() over (order by coalesce(t.n_train, 0) desc) as popularity_rank,
        count(*) over () as n_items,
        row_number() over (order by try_cast(i.item_id as bigint) nulls last, i.item_id) - 1 as item_idx
    from {{ ref('stg_items') }} as i
    left join train_stats as t using (item_id)
    left join watched_next as w using (item_id)
    left join {{ ref('cold_items') }} as c using (item_id)
)

select
    item_id,
    item_idx,
    title,
    release_year,
    genres,
    attributes,
    n_train_interactions,
    n_train_likes,
    mean_train_rating,
    first_train_ts,
    last_train_ts,
    is_cold,
    watched_next_ids,
    popularity_rank,
    ceil(100.0 * popularity_rank / n_items)::integer as popularity_percentile
from ranked
order by item_idx
