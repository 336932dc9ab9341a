-- A table in the run's audit schema (like int_touched_users): the marts, the touched users and the
-- ordered events all read it, and as a view each of them would count the whole log again.
{{ config(materialized='table', schema='marts_audit') }}
-- The seed is escaped as a SQL string literal: it is free text from the run config.
with item_counts as (
    select item_id, count(*) as n_interactions
    from {{ ref('stg_ratings') }}
    group by item_id
),

eligible as (
    select
        item_id,
        n_interactions,
        row_number() over (order by md5({{ "'" ~ (var("cold_item_seed") | string | replace("'", "''")) ~ "'" }} || ':' || item_id), item_id) as draw_rank,
        count(*) over () as n_eligible
    from item_counts
    where n_interactions >= {{ var('cold_item_min_interactions') }}
)

select item_id, n_interactions, draw_rank
from eligible
where draw_rank <= round(n_eligible * {{ var('cold_item_fraction') }})
