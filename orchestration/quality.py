"""Great Expectations 1.x suites run directly (no dagster-ge), reported as Dagster check results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
import pandas as pd


def run_suite(frame: pd.DataFrame, name: str, expectations: Sequence[Any]) -> dg.AssetCheckResult:
    """Validate ``frame`` against ``expectations``; the result carries GX's per-expectation outcome
    as metadata (a markdown table in the UI). great_expectations is imported here: it costs ~3 s."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=name, expectations=list(expectations))
    result = batch.validate(suite)
    rows = []
    for r in result.results:
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}
        observed = r.result.get("observed_value", r.result.get("unexpected_count", ""))
        sample = r.result.get("partial_unexpected_list", [])[:3]
        rows.append(
            {
                "ok": "✅" if r.success else "❌",
                "expectation": r.expectation_config.type,
                "arguments": ", ".join(f"{k}={v}" for k, v in kwargs.items()),
                "observed / unexpected": observed,
                "sample unexpected": sample or "",
            }
        )
    table = pd.DataFrame(rows)
    failed = table[table["ok"] == "❌"]["expectation"].tolist()
    return dg.AssetCheckResult(
        passed=bool(result.success),
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if result.success else f"Failed: {', '.join(failed)}",
        metadata={
            "rows_validated": len(frame),
            "expectations_evaluated": result.statistics["evaluated_expectations"],
            "expectations_failed": result.statistics["unsuccessful_expectations"],
            "success_percent": float(result.statistics["success_percent"] or 0.0),
            "results": dg.MetadataValue.md(table.to_markdown(index=False)),
        },
    )
