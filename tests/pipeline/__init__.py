"""The pipeline end to end (all ``slow``): dbt on ML-100K, Dagster in-process and over ``dg``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from tests import REPO_ROOT


def ml100k_marts(db: Path, ml100k_dir: Path, **dbt_vars) -> subprocess.CompletedProcess:
    """MovieLens-100K loaded into ``db``'s raw tables, then ``dbt build`` by hand, as a user would run
    it: the marts straight into ``marts`` (no audit schema). Returns dbt's completed process."""
    from m6rec.data.sources import read_source
    from m6rec.data.warehouse import connect, replace_raw_tables

    with connect(db) as conn:
        replace_raw_tables(conn, read_source(ml100k_dir), "ml-100k")
    dbt_vars = {"marts_audit_schema": "marts", **dbt_vars}
    cmd = [str(Path(sys.executable).parent / "dbt"), "build", "--vars", json.dumps(dbt_vars)]
    env = {**os.environ, "M6REC_DUCKDB_PATH": str(db)}
    return subprocess.run(cmd, cwd=REPO_ROOT / "transforms", env=env, capture_output=True, text=True)


def asset_metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    """The metadata values of the one materialization of ``key`` (e.g. ``"promoted_model"``) in a run."""
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def copy_published_for_audit(database, layer: str, run_id: str) -> str:
    """Copy the published ``raw`` or ``marts`` tables into the audit schema of run ``run_id`` — what that
    run's write step would have left — so its suites (and publish step) can be run on them. Returns the
    schema."""
    import duckdb

    from m6rec.data.warehouse import RAW_SCHEMA, audit_schema, claim_audit_slot
    from orchestration.stages import MART_NAMES

    names = ("ratings", "items", "users") if layer == RAW_SCHEMA else MART_NAMES
    with duckdb.connect(str(database)) as conn:
        if layer == RAW_SCHEMA:
            schema = audit_schema(layer, run_id)
            conn.execute(f"create schema {schema}")
        else:
            schema = claim_audit_slot(conn, layer, run_id)
        for name in names:
            conn.execute(f"create table {schema}.{name} as from {layer}.{name}")
        if layer == RAW_SCHEMA:
            conn.execute(f"create table {schema}.load_info as from {layer}.load_log limit 1")
        else:
            conn.execute(
                f"create table {schema}.dbt_vars as select '{{}}'::json as vars, "
                "null::bigint as raw_load_seq, 'null'::json as delta"
            )
    return schema


def run_selection(selection, run_id: str, name: str = "selected") -> dg.ExecuteInProcessResult:
    """Run an asset/check selection of the code location in-process under a chosen run id."""
    from orchestration.definitions import defs

    job = dg.define_asset_job(name, selection=selection)
    return (
        dg.Definitions.merge(defs(), dg.Definitions(jobs=[job]))
        .resolve_job_def(name)
        .execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, run_id=run_id)
    )
