with warm as (
    select
        *,
        row_number() over (partition by user_id order by position desc) as from_end,
        count(*) over (partition by user_id) as n_warm
    from {{ ref('user_events') }}
    where not held_out
)

select
    user_id,
    item_id,
    rating,
    ts,
    event_seq,
    position,
    is_like,
    case
        when n_warm >= 2 and from_end = 1 then 'test'
        when n_warm >= 3 and from_end = 2 then 'valid'
        else 'train'
    end as split
from warm

union all

select user_id, item_id, rating, ts, event_seq, position, is_like, 'cold' as split
from {{ ref('user_events') }}
where held_out
