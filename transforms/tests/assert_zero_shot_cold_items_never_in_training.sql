{{ config(meta={"dagster": {"ref": {"name": "splits"}}}) }}
-- Under zero-shot, a cold item never appears in train/valid/test; without it, no event is 'cold'.
select s.*
from {{ ref('splits') }} as s
left join {{ ref('cold_items') }} as c using (item_id)
where ({{ var('zero_shot') }} and c.item_id is not null and s.split <> 'cold')
   or (not {{ var('zero_shot') }} and s.split = 'cold')
