-- item_transitions: one row per (item, next item), and no negative count (publish replaces pairs by key).
select item_id, next_item_id, count(*) as rows_per_pair, min(n) as lowest_count
from {{ ref('item_transitions') }}
group by item_id, next_item_id
having count(*) > 1 or min(n) < 0
