{#- Incremental builds. When only daily drops arrived since the published marts were built, the Dagster
    dbt step writes the delta into the audit schema's one-row table `dbt_delta` before dbt runs:
    {"since_load_seq": K, "drop_dates": [...], "published_schema": "marts"}. The per-user marts are then
    built for the users those drops touch (`int_touched_users`) and merged into the published ones at
    publish, in one transaction; without it (or with null) every model is built whole.
    A table read when the models run, not a var: vars are part of dbt's parse, and a build with the same
    vars as the last one reuses that parse (partial parsing). Models that ref() more in a delta branch
    say so with `-- depends_on:` (at parse time there is no delta). -#}

{% macro delta() -%}
    {%- if not execute -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set plan = adapter.get_relation(
        database=target.database, schema=var('marts_audit_schema', 'marts_audit'), identifier='dbt_delta'
    ) -%}
    {%- if plan is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(fromjson(run_query('select delta::varchar from ' ~ plan).columns[0].values()[0] or 'null')) }}
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

{#- Train-split pairs (a, b) of one user with b within `watched_next_window` events after a, counted:
    `relation` names a splits table (or a CTE of its rows). -#}
{% macro train_pairs(relation) -%}
    select a.item_id, b.item_id as next_item_id, count(*) as n
    from {{ relation }} as a
    inner join {{ relation }} as b
        on
            a.user_id = b.user_id
            and b.position > a.position
            and b.position <= a.position + {{ var('watched_next_window') }}
    where a.split = 'train' and b.split = 'train' and a.item_id <> b.item_id
    group by a.item_id, b.item_id
{%- endmacro %}

{#- A mart published by key (orchestration KEYED_MARTS) as it will be once published: on an incremental
    build, the published rows whose key this build did not emit, plus this build's rows that are kept
    (`keep`: the rows a key's new state leaves, e.g. a count above 0). On a whole build, the model. -#}
{% macro as_published_by_key(name, keys, keep) -%}
    {%- if delta() -%}
        (
            select * from {{ delta().published_schema }}.{{ name }} as p
            where not exists (
                select 1 from {{ ref(name) }} as c
                where {% for k in keys %}c.{{ k }} = p.{{ k }}{{ " and " if not loop.last }}{% endfor %}
            )
            union all by name
            select * from {{ ref(name) }} where {{ keep }}
        )
    {%- else -%}
        {{ ref(name) }}
    {%- endif -%}
{%- endmacro %}
