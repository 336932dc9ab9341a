select
    user_id,
    item_id,
    rating,
    ts,
    to_timestamp(ts) as event_at,
    event_seq,
    load_seq,
    drop_date,
    coalesce(rating > {{ var('like_threshold') }}, true) as is_like
from {{ source('raw', 'ratings') }}
