-- depends_on: {{ ref('int_touched_users') }}
select
    r.user_id,
    r.item_id,
    r.rating,
    r.ts,
    r.event_at,
    r.event_seq,
    r.drop_date,
    r.is_like,
    row_number() over (partition by r.user_id order by r.ts, r.event_seq) - 1 as position,
    c.item_id is not null as is_cold_item,
    ({{ var('zero_shot') }} and c.item_id is not null) as held_out
from {{ ref('stg_ratings') }} as r
left join {{ ref('int_cold_items') }} as c using (item_id)
{{ only_delta_users('r') }}
