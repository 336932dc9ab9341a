select
    user_id,
    item_id,
    rating,
    ts,
    event_at,
    event_seq,
    drop_date,
    position,
    is_like,
    is_cold_item,
    held_out
from {{ ref('int_events_ordered') }}
order by user_id, position
