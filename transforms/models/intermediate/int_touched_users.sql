-- Users whose per-user marts an incremental build must rebuild: they have rows from loads newer than
-- the published marts, or rows the reloaded drop days replaced, or an event on an item whose
-- cold-item status moved (it changes their `is_cold_item` / held-out rows). A table in the run's audit
-- schema: the marts of the build filter on it, and publish replaces exactly these users' rows.
-- Empty on a whole build (publish then replaces every mart whole).
-- depends_on: {{ ref('int_cold_items') }}
{{ config(materialized='table', schema='marts_audit') }}
{% set d = delta() %}
{% if d %}
    {% set dates = d.drop_dates | map('string') | map('replace', "'", "") | list %}
    with cold_moved as (
        (select item_id from {{ ref('int_cold_items') }} except select item_id from {{ d.published_schema }}.cold_items)
        union
        (select item_id from {{ d.published_schema }}.cold_items except select item_id from {{ ref('int_cold_items') }})
    )

    select user_id from {{ ref('stg_ratings') }} where load_seq > {{ d.since_load_seq | int }}
    union
    select user_id from {{ d.published_schema }}.user_events
    where drop_date in ({% for day in dates %}'{{ day }}'::date{{ ", " if not loop.last }}{% endfor %}{{ "null" if not dates }})
    union
    select user_id from {{ d.published_schema }}.user_events where item_id in (select item_id from cold_moved)
    union
    select user_id from {{ ref('stg_ratings') }} where item_id in (select item_id from cold_moved)
{% else %}
    select user_id from {{ ref('stg_ratings') }} where false
{% endif %}
