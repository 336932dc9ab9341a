"""Time the data half (ingest -> GX -> dbt build -> GX) in-process on MovieLens-100K and count the marts.

Usage: python bench/data_pipeline.py   (uses M6REC_* variables; defaults to ./data)
Writes bench/results/data_pipeline.json.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import dagster as dg
import duckdb

from orchestration import settings
from orchestration.definitions import defs

MARTS = ["user_events", "splits", "ctr_examples", "item_catalogue", "user_profiles", "cold_items"]


def main() -> None:
    start = time.perf_counter()
    job = defs().resolve_job_def("data_pipeline")
    loaded = time.perf_counter()
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    done = time.perf_counter()
    checks = result.get_asset_check_evaluations()
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as conn:
        counts = {t: conn.execute(f"select count(*) from marts.{t}").fetchall()[0][0] for t in MARTS}
        by_split = dict(
            conn.execute("select split, count(*) from marts.splits group by 1 order by 1").fetchall()
        )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            p: __import__("importlib.metadata").metadata.version(p)
            for p in ["dagster", "dagster-dbt", "dbt-core", "dbt-duckdb", "duckdb", "great_expectations"]
        },
        "definitions_load_s": round(loaded - start, 2),
        "run_in_process_s": round(done - loaded, 2),
        "checks_passed": sum(c.passed for c in checks),
        "checks_total": len(checks),
        "mart_rows": counts,
        "splits": by_split,
    }
    out = Path(__file__).parent / "results" / "data_pipeline.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
