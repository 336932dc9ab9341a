{{ config(meta={"dagster": {"ref": {"name": "ctr_examples"}}}) }}
-- CTR history holds at most N events, all at or before the target's time, none held out.
select e.example_id
from {{ ref('ctr_examples') }} as e
where e.history_length > {{ var('ctr_history_length') }}
   or list_max(e.history_ts) > e.target_ts
   or list_has_any(e.history_item_ids, coalesce(
        (select list(item_id) from {{ ref('cold_items') }}), []::varchar[]))
      and {{ var('zero_shot') }}
