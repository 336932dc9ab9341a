"""Daily drops, the incremental path: one Dagster partition per day. A run for a day (or a backfill over
many days, in one run) stages their events in this run's audit schema (``raw_audit/ratings_drop``),
checks them with a blocking suite, appends them to ``raw.ratings`` (``raw/ratings_drops``); the
``daily_drops`` job then has dbt build only the marts' rows of the users the drops touched
(``m6rec_dbt`` sees that only drops arrived) and ``published_marts`` merges them in one transaction."""

from pathlib import Path

import dagster as dg

from m6rec.data.drops import DROP_TABLE, publish_drops, stage_drops
from m6rec.data.warehouse import RAW_SCHEMA, audit_schema
from orchestration import settings
from orchestration.defs.quality import ratings_expectations
from orchestration.defs.resources import QualityThresholds, WarehouseResource
from orchestration.quality import audited, read_audit_table, run_suite
from orchestration.stages import RAW_DROPS_AUDIT_KEY, RAW_DROPS_KEY

daily_partitions = dg.DailyPartitionsDefinition(start_date=settings.drops_start())
# An event of the drop that raw.ratings already holds from another load (a re-sent file, an overlap): one
# hash join of the drop against the published log.
ALREADY_LOADED = """
with loaded as (
    select distinct d.event_seq
    from {table} as d
    inner join raw.ratings as r using (user_id, item_id, ts)
    where r.drop_date is distinct from d.drop_date
)
select d.*, d.event_seq in (select event_seq from loaded) as already_loaded
from {table} as d
"""


class DropsConfig(dg.Config):
    """Where the drops are: ``<folder>/<YYYY-MM-DD>/interactions*.csv|tsv|parquet`` (generic format);
    empty: ``$M6REC_DROPS`` (default ``$M6REC_HOME/drops``)."""

    folder: str = ""


@dg.asset(
    key=RAW_DROPS_AUDIT_KEY,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="drops",
    kinds={"duckdb"},
    pool="duckdb",
)
def ratings_drop(
    context: dg.AssetExecutionContext, config: DropsConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The events of the partition's days, read from their drop folders into this run's audit schema (a
    row that does not parse, or names an item or user raw.* does not know, fails here: file and line)."""
    days = context.partition_keys
    schema = audit_schema(RAW_SCHEMA, context.run_id)
    with warehouse.connect() as conn:
        folder = Path(config.folder).expanduser().resolve() if config.folder else settings.drops_dir()
        counts = stage_drops(conn, folder, days, schema)
    context.log.info(f"Staged {sum(counts.values())} events of {len(days)} day(s) in {schema}.{DROP_TABLE}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(counts.values()),
            "events_per_day": dg.MetadataValue.json(counts),
            "table": f"{schema}.{DROP_TABLE}",
        }
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "ratings_drop_suite",
            asset=RAW_DROPS_AUDIT_KEY,
            blocking=True,
            description="GX: the ratings suite of a whole load, and no event already in raw.ratings "
            "from another load.",
        )
    ],
    pool="duckdb",
)
def ratings_drop_suite(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, quality: QualityThresholds
):
    import great_expectations as gx

    table = f"{audit_schema(RAW_SCHEMA, context.run.run_id)}.{DROP_TABLE}"
    frame = read_audit_table(warehouse, table, ALREADY_LOADED)
    expectations = [
        *ratings_expectations(quality),
        gx.expectations.ExpectColumnValuesToBeInSet(column="already_loaded", value_set=[False]),
    ]
    yield from audited(run_suite(frame, table, expectations), RAW_SCHEMA)


@dg.asset(
    key=RAW_DROPS_KEY,
    deps=[RAW_DROPS_AUDIT_KEY],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="drops",
    kinds={"duckdb"},
    pool="duckdb",
)
def ratings_drops(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Append the audited days to ``raw.ratings`` in one transaction (a day loaded before is replaced),
    each day logged in ``raw.load_log`` under this load's number. Runs only after the suite passed."""
    schema = audit_schema(RAW_SCHEMA, context.run_id)
    with warehouse.connect() as conn:
        days = publish_drops(conn, schema)
        total = conn.execute(f"select count(*) from {RAW_SCHEMA}.ratings").fetchone()[0]
    context.log.info(f"Appended {days} to {RAW_SCHEMA}.ratings ({total} events in all)")
    return dg.MaterializeResult(
        metadata={"events_per_day": dg.MetadataValue.json(days), "raw_ratings_rows": total}
    )


daily_drops_job = dg.define_asset_job(
    "daily_drops",
    description="A day's drop (or a backfill of many, in one run): stage, check, append to raw.ratings, "
    "then build and publish only the marts' rows of the users it touched.",
    selection=dg.AssetSelection.groups("drops", "staging", "intermediate", "marts"),
    partitions_def=daily_partitions,
)

# Off until turned on in the UI (Automation): each night, the day that just ended.
daily_drops_schedule = dg.build_schedule_from_partitioned_job(
    daily_drops_job, hour_of_day=1, default_status=dg.DefaultScheduleStatus.STOPPED
)
