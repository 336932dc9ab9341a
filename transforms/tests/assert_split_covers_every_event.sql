{{ config(meta={"dagster": {"ref": {"name": "splits"}}}) }}
-- Every interaction is assigned to exactly one split.
select 'missing' as problem, r.event_seq
from {{ ref('stg_ratings') }} as r
anti join {{ ref('splits') }} as s using (event_seq)
union all
select 'extra' as problem, s.event_seq
from {{ ref('splits') }} as s
anti join {{ ref('stg_ratings') }} as r using (event_seq)
