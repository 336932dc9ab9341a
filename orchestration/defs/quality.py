"""Blocking Great Expectations suites: the audit of write-audit-publish. They read this run's audit copy
of the raw tables and of the marts; a failed suite fails the run with a message naming the table and the
expectations, and stops the publish step, so ``raw.*`` and ``marts.*`` keep the last good set."""

import time

import dagster as dg
import pandas as pd

from m6rec.data.warehouse import MARTS_SCHEMA, RAW_SCHEMA, audit_schema, held_audit_schema
from orchestration.defs.resources import QualityThresholds, WarehouseResource
from orchestration.quality import audited, read_audit_table, run_suite
from orchestration.stages import MARTS_AUDIT_KEYS, RAW_AUDIT_KEYS

NON_BLANK = r"\S"


def _now_ts() -> int:
    return int(time.time()) + 86_400


def _gx():
    import great_expectations as gx

    return gx.expectations


def _suite(name: str, key: dg.AssetKey, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=key, blocking=True, description=description)


def _raw_table(context: dg.AssetCheckExecutionContext, name: str) -> str:
    return f"{audit_schema(RAW_SCHEMA, context.run.run_id)}.{name}"


def _mart_table(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, name: str) -> str:
    with warehouse.connect(read_only=True) as conn:
        schema = held_audit_schema(conn, MARTS_SCHEMA, context.run.run_id)
    if schema is None:
        raise dg.Failure(
            description=f"run {context.run.run_id} built no marts to audit: the suites audit the copy this "
            "run wrote, so run them together with m6rec_dbt (e.g. the whole data_pipeline job)."
        )
    return f"{schema}.{name}"


def ratings_expectations(quality: QualityThresholds) -> list:
    """What every batch of events must satisfy, a whole load or a daily drop."""
    e = _gx()
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToNotBeNull(column="user_id"),
        e.ExpectColumnValuesToNotBeNull(column="item_id"),
        e.ExpectColumnValuesToNotBeNull(column="ts"),
        e.ExpectColumnValuesToBeBetween(
            column="rating", min_value=quality.rating_min, max_value=quality.rating_max
        ),
        e.ExpectColumnValuesToBeBetween(column="ts", min_value=quality.earliest_ts, max_value=_now_ts()),
        e.ExpectColumnValuesToBeUnique(column="event_seq"),
        e.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "ts"]),
    ]


@dg.multi_asset_check(
    specs=[
        _suite(
            "raw_ratings_suite",
            RAW_AUDIT_KEYS["ratings"],
            "GX: ids present, ratings in range, sane timestamps, no duplicated events.",
        )
    ],
    pool="duckdb",
)
def raw_ratings_suite(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, quality: QualityThresholds
):
    table = _raw_table(context, "ratings")
    frame = read_audit_table(warehouse, table, "select * from {table}")
    expectations = ratings_expectations(quality)
    yield from audited(run_suite(frame, table, expectations), RAW_SCHEMA)


@dg.multi_asset_check(
    specs=[
        _suite(
            "raw_items_suite",
            RAW_AUDIT_KEYS["items"],
            "GX: unique ids, non-empty titles, plausible release years.",
        )
    ],
    pool="duckdb",
)
def raw_items_suite(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    table = _raw_table(context, "items")
    frame = read_audit_table(warehouse, table, "select item_id, title, release_year from {table}")
    e = _gx()
    expectations = [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="item_id"),
        e.ExpectColumnValuesToNotBeNull(column="title"),
        e.ExpectColumnValuesToMatchRegex(column="title", regex=NON_BLANK),
        e.ExpectColumnValuesToBeBetween(
            column="release_year", min_value=1800, max_value=pd.Timestamp.now().year + 5
        ),
    ]
    yield from audited(run_suite(frame, table, expectations), RAW_SCHEMA)


@dg.multi_asset_check(
    specs=[
        _suite(
            "raw_users_suite",
            RAW_AUDIT_KEYS["users"],
            "GX: unique user ids, plausible ages (the users file is optional).",
        )
    ],
    pool="duckdb",
)
def raw_users_suite(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    table = _raw_table(context, "users")
    frame = read_audit_table(warehouse, table, "select user_id, age, gender from {table}")
    e = _gx()
    expectations = [
        e.ExpectColumnValuesToBeUnique(column="user_id"),
        e.ExpectColumnValuesToNotBeNull(column="user_id"),
        e.ExpectColumnValuesToBeBetween(column="age", min_value=1, max_value=120),
    ]
    yield from audited(run_suite(frame, table, expectations), RAW_SCHEMA)


@dg.multi_asset_check(
    specs=[
        _suite(
            "splits_suite",
            MARTS_AUDIT_KEYS["splits"],
            "GX: known split labels, leave-one-out proportions, sane timestamps.",
        )
    ],
    pool="duckdb",
)
def splits_suite(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, quality: QualityThresholds
):
    table = _mart_table(context, warehouse, "splits")
    frame = read_audit_table(
        warehouse,
        table,
        """select split, ts, (split = 'train')::int as is_train,
                  (split in ('valid', 'test'))::int as is_holdout,
                  count(*) filter (where split = 'test') over (partition by user_id) as tests_of_user
           from {table}""",
    )
    e = _gx()
    expectations = [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test", "cold"]),
        e.ExpectColumnValuesToBeInSet(column="tests_of_user", value_set=[0, 1]),
        e.ExpectColumnMeanToBeBetween(column="is_train", min_value=quality.min_train_fraction, max_value=1.0),
        e.ExpectColumnMeanToBeBetween(
            column="is_holdout", min_value=0.0, max_value=1 - quality.min_train_fraction
        ),
        e.ExpectColumnValuesToBeBetween(column="ts", min_value=quality.earliest_ts, max_value=_now_ts()),
    ]
    yield from audited(run_suite(frame, table, expectations), MARTS_SCHEMA)


@dg.multi_asset_check(
    specs=[
        _suite(
            "item_catalogue_suite",
            MARTS_AUDIT_KEYS["item_catalogue"],
            "GX: every item has non-empty text and consistent popularity statistics.",
        )
    ],
    pool="duckdb",
)
def item_catalogue_suite(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    table = _mart_table(context, warehouse, "item_catalogue")
    frame = read_audit_table(
        warehouse,
        table,
        "select item_id, item_idx, title, n_train_interactions, popularity_percentile from {table}",
    )
    e = _gx()
    expectations = [
        e.ExpectColumnValuesToBeUnique(column="item_id"),
        e.ExpectColumnValuesToNotBeNull(column="title"),
        e.ExpectColumnValuesToMatchRegex(column="title", regex=NON_BLANK),
        e.ExpectColumnValuesToBeBetween(column="n_train_interactions", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="popularity_percentile", min_value=1, max_value=100),
        e.ExpectColumnValuesToBeBetween(column="item_idx", min_value=0, max_value=len(frame) - 1),
    ]
    yield from audited(run_suite(frame, table, expectations), MARTS_SCHEMA)


@dg.multi_asset_check(
    specs=[
        _suite(
            "ctr_examples_suite",
            MARTS_AUDIT_KEYS["ctr_examples"],
            "GX: 0/1 labels, bounded histories that precede their target, both classes present.",
        )
    ],
    pool="duckdb",
)
def ctr_examples_suite(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, quality: QualityThresholds
):
    table = _mart_table(context, warehouse, "ctr_examples")
    frame = read_audit_table(
        warehouse,
        table,
        """select label, history_length, target_rating,
                  (list_max(history_ts) <= target_ts
                   and len(history_ts) = history_length and len(history_item_ids) = history_length
                   and history_ts = list_sort(history_ts))::int as history_precedes_target
           from {table}""",
    )
    e = _gx()
    expectations = [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        e.ExpectColumnValuesToBeBetween(
            column="history_length", min_value=1, max_value=quality.max_history_length
        ),
        e.ExpectColumnValuesToBeInSet(column="history_precedes_target", value_set=[1]),
    ]
    if frame["target_rating"].notna().any():  # implicit-feedback logs have likes only
        expectations.append(e.ExpectColumnMeanToBeBetween(column="label", min_value=0.05, max_value=0.95))
    yield from audited(run_suite(frame, table, expectations), MARTS_SCHEMA)
