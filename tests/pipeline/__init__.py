"""The pipeline end to end (all ``slow``): dbt on ML-100K, Dagster in-process and over ``dg``."""

import dagster as dg


def asset_metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    """The metadata values of the one materialization of ``key`` (e.g. ``"promoted_model"``) in a run."""
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}
