"""Ingest: behaviour logs -> DuckDB ``raw.*``, validated first and swapped in atomically."""

from pathlib import Path

import dagster as dg

from m6rec.data.movielens import fetch_movielens_100k
from m6rec.data.sources import read_source
from m6rec.data.warehouse import replace_raw_tables
from orchestration import settings
from orchestration.defs.resources import WarehouseResource
from orchestration.stages import RAW_KEYS


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
            description=f"Raw {name} as loaded from the behaviour logs (m6rec.data.sources contract).",
        )
        for name, key in RAW_KEYS.items()
    ],
    pool="duckdb",
)
def raw_behaviour_logs(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: WarehouseResource):
    """Read and validate every file first; only a fully valid data set replaces the raw tables, in one
    DuckDB transaction, so a bad file leaves the previous load intact."""
    folder = resolve_source(config.source)
    context.log.info(f"Reading {folder} (format: {config.source_format})")
    dataset = read_source(folder, config.source_format)
    with warehouse.connect() as conn:
        replace_raw_tables(conn, dataset, config.source)
    context.log.info(
        f"Loaded {dataset.row_counts()} from {dataset.source_format} files into {warehouse.database}"
    )
    frames = {"ratings": dataset.ratings, "items": dataset.items, "users": dataset.users}
    for name, frame in frames.items():
        yield dg.MaterializeResult(
            asset_key=RAW_KEYS[name],
            metadata={
                "dagster/row_count": len(frame),
                "source": config.source,
                "source_format": dataset.source_format,
                "files": [str(f) for f in dataset.files],
                "preview": dg.MetadataValue.md(
                    frame.head(5).to_markdown(index=False) if len(frame) else "(empty)"
                ),
            },
        )
