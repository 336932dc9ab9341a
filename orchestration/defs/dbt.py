"""dbt transforms as Dagster assets; dbt tests show up as asset checks. Write-audit-publish: ``dbt build``
writes the marts into this run's audit schema (``marts_audit/*``), dbt's tests and the blocking GX suites
check them there, and ``published_marts`` copies a passing set over ``marts.*`` in one transaction."""

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from m6rec.data.warehouse import MARTS_SCHEMA, WarehouseLockedError, audit_schema, connect, publish_tables
from orchestration import settings
from orchestration.defs.resources import WarehouseResource
from orchestration.stages import MART_NAMES, MARTS, MARTS_AUDIT_KEYS, MARTS_AUDIT_VAR

DBT_VARS_TABLE = "dbt_vars"  # one row in the audit schema: the vars this build used (for build_info)

dbt_project = DbtProject(project_dir=settings.DBT_PROJECT_DIR)


def _manifest_is_stale(project: DbtProject) -> bool:
    manifest = Path(project.manifest_path)
    if not manifest.exists():
        return True
    sources = [
        p
        for p in Path(project.project_dir).rglob("*")
        if p.suffix in {".sql", ".yml", ".yaml"} and "target" not in p.relative_to(project.project_dir).parts
    ]
    return max(p.stat().st_mtime for p in sources) > manifest.stat().st_mtime


if _manifest_is_stale(dbt_project):
    # `dg launch`, tests and a fresh clone have no (or an old) manifest: parse so the asset graph always
    # matches the dbt project on disk. (prepare_if_dev() would only do this under `dg dev`.)
    DbtCliResource(project_dir=dbt_project, dbt_executable=settings.dbt_executable()).cli(
        ["parse", "--quiet"], target_path=dbt_project.target_path
    ).wait()


class M6RecDbtTranslator(DagsterDbtTranslator):
    """Keys are ``[schema, name]`` (``marts/splits``, ``raw/ratings``); groups are the dbt folders."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        return dg.AssetKey([dbt_resource_props["config"]["schema"], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props["fqn"][1] if len(dbt_resource_props["fqn"]) > 2 else "transforms"


class DbtBuildConfig(dg.Config):
    """dbt project variables (transforms/dbt_project.yml holds the defaults)."""

    zero_shot: bool = False
    ctr_history_length: int = 10
    like_threshold: float = 3
    cold_item_fraction: float = 0.05
    cold_item_min_interactions: int = 10
    cold_item_seed: str = "m6rec"
    watched_next_count: int = 3
    watched_next_window: int = 3
    watched_next_min_count: int = 2


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=M6RecDbtTranslator(
        settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)
    ),
    pool="duckdb",
)
def m6rec_dbt(
    context: dg.AssetExecutionContext,
    dbt: DbtCliResource,
    warehouse: WarehouseResource,
    config: DbtBuildConfig,
):
    """``dbt build``: models and their tests, against the warehouse file the resource names; the marts
    go to this run's audit schema (a failed dbt test leaves them there and ``marts.*`` untouched).

    dbt-duckdb opens the file itself and fails at once when another process holds its lock, so the build
    first waits for the lock like every other step (up to ``warehouse.lock_wait_s``), and starts again
    when it lost the race for the lock before building anything."""
    os.environ["M6REC_DUCKDB_PATH"] = str(Path(warehouse.database).resolve())  # read by profiles.yml
    schema = audit_schema(MARTS_SCHEMA, context.run_id)
    dbt_vars = json.dumps({**config.model_dump(), MARTS_AUDIT_VAR: schema})
    deadline = time.monotonic() + warehouse.lock_wait_s
    while True:
        with connect(warehouse.database, wait_s=max(deadline - time.monotonic(), 0.0)):
            pass  # free now; WarehouseLockedError once lock_wait_s has passed
        invocation = dbt.cli(["build", "--vars", dbt_vars], context=context, raise_on_error=False)
        events = 0
        for event in invocation.stream():
            events += 1
            yield event
        error = invocation.get_error()
        if error is None:
            with warehouse.connect() as conn:  # what publish records as the marts' build info
                conn.execute(
                    f"create or replace table {schema}.{DBT_VARS_TABLE} as select ?::json as vars",
                    [json.dumps(config.model_dump())],
                )
            return
        if events or "Could not set lock" not in str(error):
            raise error
        if time.monotonic() >= deadline:
            raise WarehouseLockedError(
                f"DuckDB warehouse {warehouse.database} is locked by another process for more than "
                f"{warehouse.lock_wait_s:.0f}s (DuckDB allows one writer at a time): dbt could not open it"
            ) from error
        context.log.info("dbt lost the race for the DuckDB lock to another process; trying again")
        time.sleep(1.0)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            group_name="marts",
            kinds={"duckdb"},
            deps=[MARTS_AUDIT_KEYS[name]],
            description=f"Published {name}: the last dbt build whose tests and suites all passed.",
        )
        for name, key in MARTS.items()
    ],
    pool="duckdb",
)
def published_marts(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Copy this run's audited marts over ``marts.*`` in one transaction, with ``marts.build_info`` (the
    dbt vars, run id, published time and a content fingerprint: what a bundle records as its data), then
    drop the audit schema. Runs only after every blocking suite of this run passed."""
    schema = audit_schema(MARTS_SCHEMA, context.run_id)
    with warehouse.connect() as conn:
        found = conn.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [schema, DBT_VARS_TABLE],
        ).fetchone()[0]
        if not found:
            raise dg.Failure(
                description=f"{schema} holds no finished dbt build of this run: publish runs in the same run "
                "as m6rec_dbt (e.g. the data_pipeline job), after its suites pass."
            )
        dbt_vars = json.loads(conn.execute(f"select vars from {schema}.{DBT_VARS_TABLE}").fetchone()[0])
        digest = publish_tables(
            conn,
            schema,
            MARTS_SCHEMA,
            list(MART_NAMES),
            build_info={"dbt_vars": dbt_vars, "run_id": context.run_id},
        )
        counts = {
            name: conn.execute(f"select count(*) from {MARTS_SCHEMA}.{name}").fetchone()[0]
            for name in MART_NAMES
        }
    context.log.info(f"Published {counts} from {schema} to {MARTS_SCHEMA}.* (fingerprint {digest})")
    for name, key in MARTS.items():
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                "dagster/row_count": counts[name],
                "table": f"{MARTS_SCHEMA}.{name}",
                "published_from": schema,
                "fingerprint": digest,
                "dbt_vars": dg.MetadataValue.json(dbt_vars),
            },
        )
