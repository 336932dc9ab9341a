"""Dagster code location for m6rec: ingest -> dbt -> quality gates (-> training, serving)."""
