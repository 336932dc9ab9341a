{{ config(meta={"dagster": {"ref": {"name": "splits"}}}) }}
-- depends_on: {{ ref('int_touched_users') }}
-- Every interaction is assigned to exactly one split (on an incremental build: every interaction of
-- the users it rebuilt, the only ones its splits hold).
with events as (
    select r.event_seq from {{ ref('stg_ratings') }} as r {{ only_delta_users('r') }}
)

select 'missing' as problem, r.event_seq
from events as r
anti join {{ ref('splits') }} as s using (event_seq)
union all
select 'extra' as problem, s.event_seq
from {{ ref('splits') }} as s
anti join events as r using (event_seq)
