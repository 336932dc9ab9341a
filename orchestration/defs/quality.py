"""Blocking Great Expectations gates on the raw tables and the marts: a failed suite stops every
asset downstream of the checked table in the same run."""

import time

import dagster as dg
import pandas as pd

from orchestration.defs.resources import QualityThresholds, WarehouseResource
from orchestration.quality import run_suite
from orchestration.stages import MARTS, RAW_KEYS

NON_BLANK = r"\S"


def _now_ts() -> int:
    return int(time.time()) + 86_400


def _gx():
    import great_expectations as gx

    return gx.expectations


@dg.asset_check(
    asset=RAW_KEYS["ratings"],
    blocking=True,
    pool="duckdb",
    description="GX: ids present, ratings in range, sane timestamps, no duplicated events.",
)
def raw_ratings_suite(warehouse: WarehouseResource, quality: QualityThresholds) -> dg.AssetCheckResult:
    frame = warehouse.read("select * from raw.ratings")
    e = _gx()
    return run_suite(
        frame,
        "raw_ratings",
        [
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
        ],
    )


@dg.asset_check(
    asset=RAW_KEYS["items"],
    blocking=True,
    pool="duckdb",
    description="GX: unique ids, non-empty titles, plausible release years.",
)
def raw_items_suite(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    frame = warehouse.read("select item_id, title, release_year from raw.items")
    e = _gx()
    return run_suite(
        frame,
        "raw_items",
        [
            e.ExpectTableRowCountToBeBetween(min_value=1),
            e.ExpectColumnValuesToBeUnique(column="item_id"),
            e.ExpectColumnValuesToNotBeNull(column="title"),
            e.ExpectColumnValuesToMatchRegex(column="title", regex=NON_BLANK),
            e.ExpectColumnValuesToBeBetween(
                column="release_year", min_value=1800, max_value=pd.Timestamp.now().year + 5
            ),
        ],
    )


@dg.asset_check(
    asset=RAW_KEYS["users"],
    blocking=True,
    pool="duckdb",
    description="GX: unique user ids, plausible ages (the users file is optional).",
)
def raw_users_suite(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    frame = warehouse.read("select user_id, age, gender from raw.users")
    e = _gx()
    return run_suite(
        frame,
        "raw_users",
        [
            e.ExpectColumnValuesToBeUnique(column="user_id"),
            e.ExpectColumnValuesToNotBeNull(column="user_id"),
            e.ExpectColumnValuesToBeBetween(column="age", min_value=1, max_value=120),
        ],
    )


@dg.asset_check(
    asset=MARTS["splits"],
    blocking=True,
    pool="duckdb",
    description="GX: known split labels, leave-one-out proportions, sane timestamps.",
)
def splits_suite(warehouse: WarehouseResource, quality: QualityThresholds) -> dg.AssetCheckResult:
    frame = warehouse.read("""
        select split, ts, (split = 'train')::int as is_train, (split in ('valid', 'test'))::int as is_holdout,
               count(*) filter (where split = 'test') over (partition by user_id) as tests_of_user
        from marts.splits""")
    e = _gx()
    return run_suite(
        frame,
        "splits",
        [
            e.ExpectTableRowCountToBeBetween(min_value=1),
            e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "valid", "test", "cold"]),
            e.ExpectColumnValuesToBeInSet(column="tests_of_user", value_set=[0, 1]),
            e.ExpectColumnMeanToBeBetween(
                column="is_train", min_value=quality.min_train_fraction, max_value=1.0
            ),
            e.ExpectColumnMeanToBeBetween(
                column="is_holdout", min_value=0.0, max_value=1 - quality.min_train_fraction
            ),
            e.ExpectColumnValuesToBeBetween(column="ts", min_value=quality.earliest_ts, max_value=_now_ts()),
        ],
    )


@dg.asset_check(
    asset=MARTS["item_catalogue"],
    blocking=True,
    pool="duckdb",
    description="GX: every item has non-empty text and consistent popularity statistics.",
)
def item_catalogue_suite(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    frame = warehouse.read(
        "select item_id, item_idx, title, n_train_interactions, popularity_percentile "
        "from marts.item_catalogue"
    )
    e = _gx()
    return run_suite(
        frame,
        "item_catalogue",
        [
            e.ExpectColumnValuesToBeUnique(column="item_id"),
            e.ExpectColumnValuesToNotBeNull(column="title"),
            e.ExpectColumnValuesToMatchRegex(column="title", regex=NON_BLANK),
            e.ExpectColumnValuesToBeBetween(column="n_train_interactions", min_value=0),
            e.ExpectColumnValuesToBeBetween(column="popularity_percentile", min_value=1, max_value=100),
            e.ExpectColumnValuesToBeBetween(column="item_idx", min_value=0, max_value=len(frame) - 1),
        ],
    )


@dg.asset_check(
    asset=MARTS["ctr_examples"],
    blocking=True,
    pool="duckdb",
    description="GX: 0/1 labels, bounded histories that precede their target, both classes present.",
)
def ctr_examples_suite(warehouse: WarehouseResource, quality: QualityThresholds) -> dg.AssetCheckResult:
    frame = warehouse.read("""
        select label, history_length, target_rating,
               (list_max(history_ts) <= target_ts
                and len(history_ts) = history_length and len(history_item_ids) = history_length
                and history_ts = list_sort(history_ts))::int as history_precedes_target
        from marts.ctr_examples""")
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
    return run_suite(frame, "ctr_examples", expectations)
