"""Write-audit-publish: a load or dbt build that fails any blocking suite never reaches ``raw.*`` or
``marts.*``; the rejected copy stays in its audit schema, and the run says which table and expectation."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from m6rec.data.warehouse import MARTS_SCHEMA, RAW_SCHEMA, audit_schema, read_build_info
from orchestration.defs.automation import DATA_GROUPS
from orchestration.stages import MART_NAMES, MARTS, MARTS_AUDIT_KEYS, RAW_AUDIT_KEYS, RAW_KEYS
from tests import SHARED_CACHE
from tests.pipeline import copy_published_for_audit, run_selection
from tests.synthetic import INTERACTIONS, ITEMS, USERS

pytestmark = pytest.mark.slow
PUBLISHED = {RAW_SCHEMA: ("ratings", "items", "users", "load_log"), MARTS_SCHEMA: (*MART_NAMES, "build_info")}


def run_job(
    job_name: str = "data_pipeline", source: str | None = None, **kwargs
) -> dg.ExecuteInProcessResult:
    from orchestration.definitions import defs

    run_config = {"ops": {"raw_behaviour_logs": {"config": {"source": source}}}} if source else None
    return (
        defs()
        .resolve_job_def(job_name)
        .execute_in_process(
            run_config=run_config, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, **kwargs
        )
    )


def published_tables(database: Path) -> dict[str, pd.DataFrame]:
    """Every published table, rows in a fixed order: equal frames = the same data, row for row."""
    with duckdb.connect(str(database), read_only=True) as conn:
        return {
            f"{schema}.{name}": conn.execute(f"select * from {schema}.{name} order by all").df()
            for schema, names in PUBLISHED.items()
            for name in names
        }


def assert_unchanged(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    assert before.keys() == after.keys()
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


def step_failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        e.event_specific_data.error.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    ]


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def good_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse after one passing data run on the small generic logs (copied by each test)."""
    home = tmp_path_factory.mktemp("good")
    logs = home / "logs"
    logs.mkdir()
    (logs / "interactions.csv").write_text(INTERACTIONS)
    (logs / "items.csv").write_text(ITEMS)
    (logs / "users.csv").write_text(USERS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("M6REC_HOME", str(home))
        mp.setenv("M6REC_DUCKDB_PATH", str(home / "warehouse.duckdb"))
        mp.setenv("M6REC_CACHE", str(SHARED_CACHE))
        result = run_job(source=str(logs))
    assert result.success, step_failure_messages(result)
    return home / "warehouse.duckdb"


@pytest.fixture
def warehouse(good_warehouse: Path, m6rec_home: Path) -> Path:
    m6rec_home.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(good_warehouse, m6rec_home / "warehouse.duckdb"))


def test_publish_records_what_the_marts_were_built_from(warehouse: Path) -> None:
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        info = read_build_info(conn)
        schemas = {
            r[0] for r in conn.execute("select schema_name from information_schema.schemata").fetchall()
        }
    assert info is not None and info["dbt_vars"]["ctr_history_length"] == 10
    assert set(info["tables"]) == set(MART_NAMES)
    assert len(info["fingerprint"]) == 16
    assert not [s for s in schemas if "_audit_" in s], schemas  # a passing run drops its audit schemas


def test_load_failing_a_suite_leaves_raw_and_marts_as_they_were(warehouse: Path, write_generic) -> None:
    before = published_tables(warehouse)
    bad = write_generic("bad", interactions=INTERACTIONS.replace("u1,i3,1020,4", "u1,i3,1020,99"))
    result = run_job(source=str(bad))
    assert not result.success
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "raw_ratings_suite")
    assert evaluation.passed is False and "❌" in evaluation.metadata["results"].value
    [message] = step_failure_messages(result)
    schema = audit_schema(RAW_SCHEMA, result.run_id)
    assert f"{schema}.ratings failed expect_column_values_to_be_between(column=rating" in message
    assert "e.g. [99.0]" in message and "raw.* keeps the last good set" in message
    assert not materialized(result) & {k.to_user_string() for k in (*RAW_KEYS.values(), *MARTS.values())}
    assert_unchanged(before, published_tables(warehouse))
    with duckdb.connect(str(warehouse), read_only=True) as conn:  # the rejected load, for inspection
        assert conn.execute(f"select max(rating) from {schema}.ratings").fetchone()[0] == 99


# One crafted defect per suite, written into an audit copy of the good tables.
CRAFTED = {
    "raw_ratings_suite": (RAW_SCHEMA, "ratings", "update {t} set ts = 4102444800 where event_seq = 1"),
    "raw_items_suite": (RAW_SCHEMA, "items", "update {t} set title = '   ' where item_id = 'i1'"),
    "raw_users_suite": (RAW_SCHEMA, "users", "update {t} set age = 300 where user_id = 'u1'"),
    "splits_suite": (
        MARTS_SCHEMA,
        "splits",
        "insert into {t} select * from {t} where split = 'test' limit 1",
    ),
    "item_catalogue_suite": (MARTS_SCHEMA, "item_catalogue", "update {t} set popularity_percentile = 0"),
    "ctr_examples_suite": (MARTS_SCHEMA, "ctr_examples", "update {t} set label = 2 where label = 1"),
}


@pytest.mark.parametrize("suite", sorted(CRAFTED))
def test_each_suite_stops_publish_on_a_crafted_table(warehouse: Path, suite: str) -> None:
    layer, table, defect = CRAFTED[suite]
    run_id = str(uuid.uuid4())
    schema = copy_published_for_audit(warehouse, layer, run_id)
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute(defect.format(t=f"{schema}.{table}"))
    before = published_tables(warehouse)
    audit_key = (RAW_AUDIT_KEYS if layer == RAW_SCHEMA else MARTS_AUDIT_KEYS)[table]
    published = [*RAW_KEYS.values()] if layer == RAW_SCHEMA else [*MARTS.values()]
    # The suite, the publish step and everything of the data half below it; not the write step.
    selection = dg.AssetSelection.checks(dg.AssetCheckKey(audit_key, suite)) | (
        dg.AssetSelection.assets(*published).downstream() & dg.AssetSelection.groups(*DATA_GROUPS)
    )
    result = run_selection(selection, run_id)
    assert not result.success
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == suite]
    assert evaluation.passed is False
    assert any(f"{schema}.{table} failed expect_" in m for m in step_failure_messages(result))
    assert not materialized(result), materialized(result)
    assert_unchanged(before, published_tables(warehouse))
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        assert conn.execute(f"select count(*) from {schema}.{table}").fetchone()[0] > 0  # kept
