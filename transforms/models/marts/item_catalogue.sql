with train_stats as (
    select
        item_id,
        count(*) as n_train,
        count(*) filter (where is_like) as n_train_likes,
        avg(rating) as mean_train_rating,
        min(ts) as first_train_ts,
        max(ts) as last_train_ts
    from {{ ref('splits') }}
    where split = 'train'
    group by item_id
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
        rank() over (order by coalesce(t.n_train, 0) desc) as popularity_rank,
        count(*) over () as n_items,
        row_number() over (order by try_cast(i.item_id as bigint) nulls last, i.item_id) - 1 as item_idx
    from {{ ref('stg_items') }} as i
    left join train_stats as t using (item_id)
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
    popularity_rank,
    ceil(100.0 * popularity_rank / n_items)::integer as popularity_percentile
from ranked
order by item_idx
