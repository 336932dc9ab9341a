"""dbt transforms as Dagster assets; dbt tests show up as asset checks."""

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

from m6rec.data.warehouse import WarehouseLockedError, connect
from orchestration import settings
from orchestration.defs.resources import WarehouseResource

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
    """``dbt build``: models and their tests, against the warehouse file the resource names.

    dbt-duckdb opens the file itself and fails at once when another process holds its lock, so the build
    first waits for the lock like every other step (up to ``warehouse.lock_wait_s``), and starts again
    when it lost the race for the lock before building anything."""
    os.environ["M6REC_DUCKDB_PATH"] = str(Path(warehouse.database).resolve())  # read by profiles.yml
    dbt_vars = json.dumps(config.model_dump())
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
