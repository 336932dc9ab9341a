"""dbt transforms as Dagster assets; dbt tests show up as asset checks. Write-audit-publish: ``dbt build``
writes the marts into this run's audit schema (``marts_audit/*``), dbt's tests and the blocking GX suites
check them there, and ``published_marts`` copies a passing set over ``marts.*`` in one transaction."""

import hashlib
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

from m6rec.data.warehouse import (
    MARTS_SCHEMA,
    RAW_SCHEMA,
    WarehouseLockedError,
    claim_audit_slot,
    connect,
    held_audit_schema,
    merge_delta,
    next_load_seq,
    publish_tables,
    read_build_info,
    table_exists,
)
from orchestration import settings
from orchestration.defs.resources import WarehouseResource
from orchestration.stages import (
    KEYED_MARTS,
    MART_NAMES,
    MARTS,
    MARTS_AUDIT_KEYS,
    MARTS_AUDIT_VAR,
    PER_USER_MARTS,
    RAW_DROPS_KEY,
)

# A backfill of daily drops over many days is one run (`dg launch --partition-range` needs every asset of
# the daily_drops job to say so): the marts are built once, for all of its days.
SINGLE_RUN = dg.BackfillPolicy.single_run()
DBT_VARS_TABLE = "dbt_vars"  # one row in the audit schema: the vars this build used (for build_info)
DBT_DELTA_TABLE = "dbt_delta"  # one row in the audit schema: the delta dbt builds (transforms/macros)
TOUCHED_USERS = "int_touched_users"  # an incremental build's users, in its audit schema

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

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None):
        """As dbt says, plus one edge dbt cannot see: ``stg_ratings`` also reads the rows daily drops
        append to ``raw.ratings`` (``raw/ratings_drops``), so a drop is published before dbt runs."""
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id == "model.m6rec.stg_ratings":
            spec = spec.merge_attributes(deps=[RAW_DROPS_KEY])
        return spec

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props["fqn"][1] if len(dbt_resource_props["fqn"]) > 2 else "transforms"


class DbtBuildConfig(dg.Config):
    """dbt project variables (transforms/dbt_project.yml holds the defaults), and ``incremental``: build
    only what daily drops changed since the published marts when that is all that changed; anything
    else (a whole load since, other vars, changed models, no published marts) builds everything.
    ``incremental: false`` always builds everything."""

    incremental: bool = True

    zero_shot: bool = False
    ctr_history_length: int = 10
    like_threshold: float = 3
    cold_item_fraction: float = 0.05
    cold_item_min_interactions: int = 10
    cold_item_seed: str = "m6rec"
    watched_next_count: int = 3
    watched_next_window: int = 3
    watched_next_min_count: int = 2

    def dbt_vars(self) -> dict[str, Any]:
        """The project's vars: what the marts depend on (``incremental`` only says how they are built)."""
        return self.model_dump(exclude={"incremental"})


def models_digest(project: DbtProject = dbt_project) -> str:
    """A hash of the dbt project's models, macros and tests: marts built by other SQL are rebuilt whole."""
    digest = hashlib.sha256()
    root = Path(project.project_dir)
    for folder in ("models", "macros", "tests"):
        for path in [root / "dbt_project.yml", *sorted((root / folder).rglob("*"))]:
            if path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def plan_delta(conn, config: DbtBuildConfig) -> tuple[dict[str, Any] | None, int | None, str]:
    """Whether this build can be incremental: ``(delta or None, raw load number it covers, why)``.
    It can when the published marts were built by the same models from the same vars and every raw
    load since is a daily drop; the delta names those drops (``transforms/macros/delta.sql``)."""
    if not table_exists(conn, RAW_SCHEMA, "load_log"):
        return None, None, "no raw load yet"
    next_load_seq(conn, RAW_SCHEMA)  # adds the load columns to a warehouse written before them
    latest = conn.execute(f"select max(load_seq) from {RAW_SCHEMA}.load_log").fetchone()[0]
    if not config.incremental:
        return None, latest, "a whole build was asked for"
    info = read_build_info(conn, MARTS_SCHEMA)
    if info is None:
        return None, latest, "no marts are published yet"
    since = info.get("raw_load_seq")
    if since is None or not info.get("table_stats"):
        return None, latest, "the published marts predate incremental builds"
    if info.get("dbt_vars") != config.dbt_vars():
        return None, latest, "the dbt vars differ from the published marts'"
    if info.get("models_digest") != models_digest():
        return None, latest, "the dbt models changed since the published marts were built"
    loads = conn.execute(
        f"select load_seq, drop_date from {RAW_SCHEMA}.load_log where load_seq > ? order by 1", [since]
    ).fetchall()
    if any(day is None for _, day in loads):
        return None, latest, "a whole load was published since the marts"
    days = sorted({str(day) for _, day in loads})
    delta = {"since_load_seq": int(since), "drop_dates": days, "published_schema": MARTS_SCHEMA}
    return delta, latest, f"{len(days)} daily drop(s) since raw load {since}: {', '.join(days) or 'none'}"


def _target_path(database: str, schema: str) -> Path:
    """dbt's target folder for builds of ``schema`` in the warehouse file ``database``: the same folder for
    the same pair, so dbt finds its last parse there (partial_parse.msgpack) and reuses it when nothing
    it depends on changed. One pair builds at a time (its run holds the schema; DuckDB, the file), so no
    two dbt processes write the folder at once."""
    where = hashlib.sha256(str(Path(database).resolve()).encode()).hexdigest()[:8]
    return Path(dbt_project.target_path) / f"{schema}-{where}"


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=M6RecDbtTranslator(
        settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)
    ),
    pool="duckdb",
    backfill_policy=SINGLE_RUN,
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
    with warehouse.connect() as conn:
        schema = claim_audit_slot(conn, MARTS_SCHEMA, context.run_id)
        delta, load_seq, why = plan_delta(conn, config)
        # The delta is a table dbt reads when it runs, not a var: vars are part of dbt's parse, and the
        # same vars as the last build of this schema let dbt reuse that parse (partial_parse.msgpack in
        # the schema's own target folder).
        conn.execute(
            f"create or replace table {schema}.{DBT_DELTA_TABLE} as select ?::json as delta",
            [json.dumps(delta)],
        )
    context.log.info(f"{'Incremental' if delta else 'Whole'} build: {why} (into {schema})")
    dbt_vars = json.dumps({**config.dbt_vars(), MARTS_AUDIT_VAR: schema})
    # An incremental build tests what it builds (the marts' delta); the staging views' tests (tag
    # whole_log) would re-scan the whole raw log, whose new rows the drop's own suite already checked.
    skip = ["--exclude", "tag:whole_log"] if delta else []
    deadline = time.monotonic() + warehouse.lock_wait_s
    while True:
        with connect(warehouse.database, wait_s=max(deadline - time.monotonic(), 0.0)):
            pass  # free now; WarehouseLockedError once lock_wait_s has passed
        invocation = dbt.cli(
            ["build", "--vars", dbt_vars, *skip],
            context=context,
            raise_on_error=False,
            target_path=_target_path(warehouse.database, schema),
        )
        events = 0
        for event in invocation.stream():
            events += 1
            yield event
        error = invocation.get_error()
        if error is None:
            with warehouse.connect() as conn:  # what publish records as the marts' build info
                conn.execute(
                    f"create or replace table {schema}.{DBT_VARS_TABLE} as "
                    "select ?::json as vars, ?::bigint as raw_load_seq, ?::json as delta",
                    [json.dumps(config.dbt_vars()), load_seq, json.dumps(delta)],
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
    backfill_policy=SINGLE_RUN,
)
def published_marts(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Copy this run's audited marts over ``marts.*`` in one transaction, with ``marts.build_info`` (the
    dbt vars, run id, published time and a content fingerprint: what a bundle records as its data), then
    drop the audit schema. Runs only after every blocking suite of this run passed."""
    with warehouse.connect() as conn:
        schema = held_audit_schema(conn, MARTS_SCHEMA, context.run_id)
        if schema is None or not table_exists(conn, schema, DBT_VARS_TABLE):
            raise dg.Failure(
                description=f"run {context.run_id} holds no finished dbt build ({schema or 'no schema'}): "
                "publish runs in the same run as m6rec_dbt (e.g. data_pipeline), after its suites pass."
            )
        vars_json, load_seq, delta_json = conn.execute(
            f"select vars, raw_load_seq, delta from {schema}.{DBT_VARS_TABLE}"
        ).fetchone()
        dbt_vars, delta = json.loads(vars_json), json.loads(delta_json)
        build_info = {
            "dbt_vars": dbt_vars,
            "run_id": context.run_id,
            "raw_load_seq": load_seq,
            "models_digest": models_digest(),
        }
        previous = read_build_info(conn, MARTS_SCHEMA) if delta else None
        if delta and previous and previous.get("raw_load_seq") == load_seq:
            # another run published the same drops meanwhile: marts.* already hold this build's rows
            conn.execute(f"drop schema {schema} cascade")
            digest = previous["fingerprint"]
            context.log.info(f"marts.* already cover raw load {load_seq} (published by another run)")
        elif delta:
            if previous is None or previous.get("raw_load_seq") != delta["since_load_seq"]:
                raise dg.Failure(
                    description=f"{schema} is an incremental build on marts published from raw load "
                    f"{delta['since_load_seq']}, but marts.* changed since (now raw load "
                    f"{previous and previous.get('raw_load_seq')}): run the daily_drops job again"
                )
            touched = conn.execute(f"select count(*) from {schema}.{TOUCHED_USERS}").fetchone()[0]
            digest = merge_delta(
                conn,
                schema,
                MARTS_SCHEMA,
                per_user=list(PER_USER_MARTS),
                keyed=KEYED_MARTS,
                whole=[n for n in MART_NAMES if n not in PER_USER_MARTS and n not in KEYED_MARTS],
                users_table=TOUCHED_USERS,
                build_info={**build_info, "delta": delta},
                previous_stats=previous["table_stats"],
            )
            context.log.info(f"Merged the rows of {touched} users from {schema} into {MARTS_SCHEMA}.*")
        else:
            digest = publish_tables(conn, schema, MARTS_SCHEMA, list(MART_NAMES), build_info=build_info)
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
