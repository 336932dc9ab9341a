{#- Use the folder's schema as is (staging, intermediate) rather than <target>_<schema>. The marts are
    written first into an audit schema (var marts_audit_schema: the Dagster dbt step passes the one its
    run holds) and published to `marts` only after their suites pass (write-audit-publish,
    orchestration/defs). -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif custom_schema_name | trim == 'marts_audit' -%}
        {{ var('marts_audit_schema', 'marts_audit') }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
