{#- Incremental builds. The Dagster dbt step sets var `delta` when only daily drops arrived since the
    published marts were built: {"since_load_seq": K, "drop_dates": [...], "published_schema": "marts"}.
    The per-user marts are then built for the users those drops touch (`int_touched_users`) and merged into
    the published ones at publish, in one transaction; without the var every model is built whole. -#}

{% macro delta() -%}
    {{ return(var('delta', none)) }}
{%- endmacro %}

{#- Keep only the rows of users the delta touches (nothing to filter on a whole build). -#}
{% macro only_delta_users(alias) -%}
    {%- if delta() -%}
        where {{ alias }}.user_id in (select user_id from {{ ref('int_touched_users') }})
    {%- endif -%}
{%- endmacro %}

{#- A per-user mart as it will be once published: the published rows of users the delta does not
    touch, plus this build's rows (which hold only touched users). On a whole build, the model itself. -#}
{% macro as_published(name) -%}
    {%- if delta() -%}
        (
            select * from {{ delta().published_schema }}.{{ name }}
            where user_id not in (select user_id from {{ ref('int_touched_users') }})
            union all by name
            select * from {{ ref(name) }}
        )
    {%- else -%}
        {{ ref(name) }}
    {%- endif -%}
{%- endmacro %}
