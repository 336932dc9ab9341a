"""Ingest, write-audit-publish: behaviour logs are loaded into this run's audit schema
(``raw_audit/*``), the blocking Great Expectations suites (``quality.py``) read them there, and only a
load that passed every suite is copied over ``raw.*`` in one transaction (``raw/*``)."""

from pathlib import Path

import dagster as dg

from m6rec.data.movielens import fetch_movielens_100k
from m6rec.data.sources import read_source
from m6rec.data.warehouse import RAW_DDL, RAW_SCHEMA, audit_schema, publish_tables, stage_raw_tables
from orchestration import settings
from orchestration.defs.resources import WarehouseResource
from orchestration.stages import RAW_AUDIT_KEYS, RAW_KEYS


class IngestConfig(dg.Config):
    """Which logs to load. ``source`` is ``movielens-100k`` (the copy inside the RecBole wheel) or a
    folder in one of the formats of ``m6rec.data.sources`` (generic CSV/Parquet, RecBole, u.data)."""

    source: str = settings.DEFAULT_SOURCE
    source_format: str = "auto"


def resolve_source(source: str) -> Path:
    if source == settings.DEFAULT_SOURCE:
        return fetch_movielens_100k(settings.cache_dir())
    return Path(source).expanduser().resolve()


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            group_name="ingest",
            kinds={"duckdb"},
            description=f"Raw {name} as read from the behaviour logs, in this run's audit schema "
            "(raw_audit_<run>): the blocking suites check it here before anything is published.",
        )
        for name, key in RAW_AUDIT_KEYS.items()
    ],
    pool="duckdb",
)
def raw_behaviour_logs(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: WarehouseResource):
    """Read and parse every file (a file that does not parse fails here, naming file and field), then
    write the load into this run's audit schema; ``raw.*`` is not touched until the suites pass."""
    folder = resolve_source(config.source)
    schema = audit_schema(RAW_SCHEMA, context.run_id)
    context.log.info(f"Reading {folder} (format: {config.source_format}) into {schema}")
    dataset = read_source(folder, config.source_format)
    with warehouse.connect() as conn:
        stage_raw_tables(conn, dataset, config.source, schema)
    context.log.info(f"Staged {dataset.row_counts()} from {dataset.source_format} files in {schema}")
    frames = {"ratings": dataset.ratings, "items": dataset.items, "users": dataset.users}
    for name, frame in frames.items():
        yield dg.MaterializeResult(
            asset_key=RAW_AUDIT_KEYS[name],
            metadata={
                "dagster/row_count": len(frame),
                "table": f"{schema}.{name}",
                "source": config.source,
                "source_format": dataset.source_format,
                "files": [str(f) for f in dataset.files],
                "preview": dg.MetadataValue.md(
                    frame.head(5).to_markdown(index=False) if len(frame) else "(empty)"
                ),
            },
        )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key,
            group_name="ingest",
            kinds={"duckdb"},
            deps=[RAW_AUDIT_KEYS[name]],
            description=f"Published raw {name}: the last load that passed every blocking suite.",
        )
        for name, key in RAW_KEYS.items()
    ],
    pool="duckdb",
)
def published_raw(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Publish this run's audited load over ``raw.*`` in one transaction and drop its audit schema.
    Runs only after the blocking suites passed in the same run (a failed suite stops the run first)."""
    schema = audit_schema(RAW_SCHEMA, context.run_id)
    with warehouse.connect() as conn:
        digest = publish_tables(conn, schema, RAW_SCHEMA, list(RAW_DDL))
        counts = {
            name: conn.execute(f"select count(*) from {RAW_SCHEMA}.{name}").fetchone()[0] for name in RAW_DDL
        }
    context.log.info(f"Published {counts} from {schema} to {RAW_SCHEMA}.* (fingerprint {digest})")
    for name, key in RAW_KEYS.items():
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                "dagster/row_count": counts[name],
                "table": f"{RAW_SCHEMA}.{name}",
                "published_from": schema,
                "fingerprint": digest,
            },
        )
