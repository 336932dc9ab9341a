{% set n = var('ctr_history_length') %}
with warm as (
    select
        s.*,
        list(item_id) over w_before as hist_items,
        list(rating) over w_before as hist_ratings,
        list(ts) over w_before as hist_ts,
        list(item_id) over w_upto as upto_items,
        list(rating) over w_upto as upto_ratings,
        list(ts) over w_upto as upto_ts
    from {{ ref('splits') }} as s
    where split <> 'cold'
    window
        w_before as (partition by user_id order by position rows between {{ n }} preceding and 1 preceding),
        w_upto as (partition by user_id order by position rows between {{ n - 1 }} preceding and current row)
),

-- A held-out cold target (zero-shot) takes the warm history that precedes it.
cold as (
    select
        c.user_id, c.item_id, c.rating, c.ts, c.position, c.is_like, c.split,
        w.upto_items as hist_items, w.upto_ratings as hist_ratings, w.upto_ts as hist_ts
    from {{ ref('splits') }} as c
    asof left join warm as w
        on c.user_id = w.user_id and c.position > w.position
    where c.split = 'cold'
),

examples as (
    select user_id, item_id, rating, ts, position, is_like, split, hist_items, hist_ratings, hist_ts
    from warm
    union all
    select user_id, item_id, rating, ts, position, is_like, split, hist_items, hist_ratings, hist_ts
    from cold
)

select
    user_id || ':' || position as example_id,
    user_id,
    position,
    split,
    item_id as target_item_id,
    rating as target_rating,
    ts as target_ts,
    is_like::integer as label,
    hist_items as history_item_ids,
    hist_ratings as history_ratings,
    hist_ts as history_ts,
    len(hist_items) as history_length
from examples
where len(coalesce(hist_items, [])) >= 1
