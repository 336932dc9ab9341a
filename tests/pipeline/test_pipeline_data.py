"""The data half as Dagster runs it: ingest -> GX gates -> dbt build (tests as checks) -> GX gates."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from orchestration.defs.automation import incoming_fingerprint, incoming_logs_sensor
from tests.synthetic import INTERACTIONS

pytestmark = pytest.mark.slow
GX_CHECKS = {
    "raw_ratings_suite",
    "raw_items_suite",
    "raw_users_suite",
    "splits_suite",
    "item_catalogue_suite",
    "ctr_examples_suite",
}


def run_data_job(source: str | None = None) -> dg.ExecuteInProcessResult:
    from orchestration.definitions import defs

    run_config = {"ops": {"raw_behaviour_logs": {"config": {"source": source}}}} if source else None
    job = defs().resolve_job_def("data_pipeline")
    return job.execute_in_process(
        run_config=run_config, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_whole_data_half_on_movielens(m6rec_home: Path) -> None:
    result = run_data_job()
    assert result.success
    assert {
        "raw/ratings",
        "raw/items",
        "raw/users",
        "marts/splits",
        "marts/ctr_examples",
        "marts/item_catalogue",
        "marts/user_events",
        "marts/cold_items",
    } <= materialized(result)
    evaluations = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) >= GX_CHECKS
    assert "assert_split_holdout_is_latest" in evaluations  # dbt singular tests are checks too
    assert all(e.passed for e in evaluations.values()), [n for n, e in evaluations.items() if not e.passed]
    gx_meta = evaluations["raw_ratings_suite"].metadata
    assert gx_meta["rows_validated"].value == 100_000 and gx_meta["expectations_failed"].value == 0
    with duckdb.connect(str(m6rec_home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("select count(*) from marts.splits where split = 'test'").fetchall() == [(943,)]


def test_generic_logs_flow_through_dbt(m6rec_home: Path, write_generic) -> None:
    result = run_data_job(str(write_generic()))
    assert result.success, [
        e.asset_check_key.name for e in result.get_asset_check_evaluations() if not e.passed
    ]
    with duckdb.connect(str(m6rec_home / "warehouse.duckdb"), read_only=True) as conn:
        splits = dict(conn.execute("select user_id || '/' || item_id, split from marts.splits").fetchall())
    # u2 has two events at t=2000: file order puts i1 before i3, so i3 is the test event.
    assert splits["u2/i3"] == "test" and splits["u2/i1"] == "valid" and splits["u2/i2"] == "train"
    assert splits["u4/i1"] == "train"  # a single event stays in train (RecBole)


def test_generated_logs_pass_every_gate(m6rec_home: Path, tmp_path: Path) -> None:
    """The seeded generator's logs (m6rec.data.generator) go through ingest, every GX suite and dbt test."""
    from m6rec.data.generator import LogSpec, generate_log

    log = generate_log(LogSpec(events=20_000, users=500, items=2_000, seed=1))
    result = run_data_job(str(log.write(tmp_path / "generated")))
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert result.success and set(checks) >= GX_CHECKS and all(checks.values()), checks
    with duckdb.connect(str(m6rec_home / "warehouse.duckdb"), read_only=True) as conn:
        splits = dict(conn.execute("select split, count(*) from marts.splits group by 1").fetchall())
    assert splits["test"] == splits["valid"] == 500 and sum(splits.values()) == len(log.interactions)


def test_malformed_source_fails_the_step_and_keeps_previous_raw(m6rec_home: Path, write_generic) -> None:
    assert run_data_job(str(write_generic("good"))).success
    bad = write_generic("bad", interactions=INTERACTIONS + "u4,i99,1800,4\n")
    result = run_data_job(str(bad))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.cause.message
    assert "interactions.csv, line 12, column 'item_id': item_id not found" in message
    with duckdb.connect(str(m6rec_home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute("select count(*) from raw.ratings").fetchall() == [(10,)]


def test_incoming_sensor_requests_one_run_per_new_drop(m6rec_home: Path, write_generic) -> None:
    incoming = m6rec_home / "incoming"
    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(incoming_logs_sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
    folder = write_generic("drop")
    incoming.mkdir(parents=True)
    for f in folder.iterdir():
        (incoming / f.name).write_bytes(f.read_bytes())
    assert incoming_fingerprint(incoming, settle_s=3600) is None  # changed within settle_s: may be copying
    old = time.time() - 60
    for f in incoming.iterdir():
        os.utime(f, (old, old))
    result = incoming_logs_sensor(dg.build_sensor_context(instance=instance))
    [request] = result.run_requests
    assert request.run_config["ops"]["raw_behaviour_logs"]["config"]["source"] == str(incoming)
    assert result.cursor == request.run_key
    again = incoming_logs_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert isinstance(again, dg.SkipReason) and "unchanged" in str(again.skip_message)
