"""Great Expectations 1.x suites run directly (no dagster-ge), reported as Dagster check results; a
failed suite also fails its step with a message that names the table and the expectations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

if TYPE_CHECKING:
    from orchestration.defs.resources import WarehouseResource


def read_audit_table(warehouse: WarehouseResource, table: str, sql: str) -> pd.DataFrame:
    """``sql`` (with ``{table}``) over this run's audit copy of ``table``; a clear failure when this run
    did not write one (a check launched on its own, without the step that stages the table)."""
    schema, name = table.split(".")
    with warehouse.connect(read_only=True) as conn:
        found = conn.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [schema, name],
        ).fetchone()[0]
        if not found:
            raise dg.Failure(
                description=f"{table} does not exist: the suites audit the copy this run wrote, so run "
                "them together with the step that writes it (e.g. the whole data_pipeline job)."
            )
        return conn.execute(sql.format(table=table)).df()


def audited(result: dg.AssetCheckResult, published_schema: str) -> Iterator[dg.AssetCheckResult]:
    """Report ``result``; when it failed, fail the step too, so the run's failure message names the
    table and expectations (Dagster's own blocking-check error names only the check)."""
    yield result
    if not result.passed:
        table = str(getattr(result.metadata["table"], "value", result.metadata["table"]))
        failed = getattr(result.metadata["failed"], "value", result.metadata["failed"])
        raise dg.Failure(
            description=f"{result.description}. Nothing was published: {published_schema}.* keeps the last "
            f"good set; the rejected copy stays in {table.split('.')[0]} for inspection.",
            metadata={"table": table, "failed_expectations": failed},
        )


def run_suite(frame: pd.DataFrame, table: str, expectations: Sequence[Any]) -> dg.AssetCheckResult:
    """Validate ``frame`` (read from ``table``) against ``expectations``; the result carries GX's
    per-expectation outcome as metadata (a markdown table in the UI) and a description that names the
    table and each failed expectation with its arguments and a sample of the unexpected values.
    great_expectations is imported here: it costs ~3 s."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    name = table.replace(".", "__")
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
    outcomes = pd.DataFrame(rows)
    failed = [
        f"{r['expectation']}({r['arguments']}): observed {r['observed / unexpected']}"
        + (f", e.g. {r['sample unexpected']}" if r["sample unexpected"] else "")
        for r in rows
        if r["ok"] == "❌"
    ]
    return dg.AssetCheckResult(
        passed=bool(result.success),
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if result.success else f"{table} failed {'; '.join(failed)}",
        metadata={
            "table": table,
            "failed": failed,
            "rows_validated": len(frame),
            "expectations_evaluated": result.statistics["evaluated_expectations"],
            "expectations_failed": result.statistics["unsuccessful_expectations"],
            "success_percent": float(result.statistics["success_percent"] or 0.0),
            "results": dg.MetadataValue.md(outcomes.to_markdown(index=False)),
        },
    )
