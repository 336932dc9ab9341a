"""Daily drops: a day's events are staged, checked and appended, and dbt rebuilds only the users they
touch; the marts merged at publish equal a whole rebuild over the same raw tables, row for row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from m6rec.data.generator import LogSpec, generate_log, write_drops
from m6rec.data.warehouse import MARTS_SCHEMA, fingerprint, read_build_info, table_stats
from orchestration.stages import MART_NAMES
from tests import REPO_ROOT
from tests.pipeline.test_write_audit_publish import published_tables, run_job, step_failure_messages

pytestmark = pytest.mark.slow
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def run_drops(*, day: str | None = None, first: str | None = None, last: str | None = None):
    """The daily_drops job for one day, or for a range of days in one run (a backfill)."""
    from orchestration.definitions import defs

    tags = {RANGE_START: first, RANGE_END: last} if first else None
    return (
        defs()
        .resolve_job_def("daily_drops")
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), partition_key=day, tags=tags, raise_on_error=False
        )
    )


def whole_rebuild_stats(db: Path) -> dict[str, list[int]]:
    """``dbt build`` of everything over the current raw tables into ``marts_whole``, by hand."""
    env = {**os.environ, "M6REC_DUCKDB_PATH": str(db)}
    cmd = [
        str(Path(sys.executable).parent / "dbt"),
        "build",
        "--vars",
        json.dumps({"marts_audit_schema": "marts_whole"}),
    ]
    done = subprocess.run(cmd, cwd=REPO_ROOT / "transforms", env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    with duckdb.connect(str(db), read_only=True) as conn:
        return table_stats(conn, "marts_whole", list(MART_NAMES))


@pytest.fixture
def drops_home(m6rec_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A generated log whose newest 6% of events arrive as three daily drops, the rest loaded whole."""
    log = generate_log(LogSpec(events=8000, users=300, items=400, seed=3))
    base, drops = log.split_drops(0.06, 3)
    source = base.write(tmp_path / "source")
    write_drops(drops, tmp_path / "drops")
    monkeypatch.setenv("M6REC_DROPS", str(tmp_path / "drops"))
    assert run_job(source=str(source)).success
    return m6rec_home / "warehouse.duckdb", tmp_path / "drops", drops


def test_drops_merged_incrementally_equal_a_whole_rebuild(drops_home) -> None:
    db, _, drops = drops_home
    first, second, third = sorted(drops)
    backfill = run_drops(first=first, last=second)  # one run over every day from the first to the second
    assert backfill.success, step_failure_messages(backfill)
    day = run_drops(day=third)
    assert day.success, step_failure_messages(day)

    with duckdb.connect(str(db), read_only=True) as conn:
        info = read_build_info(conn)
        loads = conn.execute("select load_seq, drop_date, ratings from raw.load_log order by 1, 2").fetchall()
        raw_days = dict(
            conn.execute("select drop_date::varchar, count(*) from raw.ratings group by 1").fetchall()
        )
        touched = conn.execute("select count(distinct user_id) from raw.ratings where drop_date is not null")
        touched = touched.fetchone()[0]
        total_users = conn.execute("select count(*) from marts.user_profiles").fetchone()[0]
        # the fingerprint kept up by the merges is the one of the tables as they are
        assert info["fingerprint"] == fingerprint(conn, MARTS_SCHEMA, list(MART_NAMES))
        merged = table_stats(conn, MARTS_SCHEMA, list(MART_NAMES))
    assert [(s, str(d) if d else None, n) for s, d, n in loads][1:] == [
        (2, first, len(drops[first])),
        (2, second, len(drops[second])),
        (3, third, len(drops[third])),
    ]
    assert {d: raw_days[d] for d in drops} == {d: len(f) for d, f in drops.items()}
    assert info["raw_load_seq"] == 3 and info["delta"]["drop_dates"] == [third]
    assert 0 < touched < total_users  # the drops touched some users, not all
    assert merged == whole_rebuild_stats(db)  # row for row what a whole rebuild gives


def test_a_day_loaded_again_replaces_its_rows(drops_home) -> None:
    db, folder, drops = drops_home
    day = sorted(drops)[0]
    assert run_drops(day=day).success
    kept = drops[day].iloc[: len(drops[day]) // 2]  # the day's file is re-sent with half its events
    kept.to_parquet(folder / day / "interactions.parquet", index=False)
    again = run_drops(day=day)
    assert again.success, step_failure_messages(again)
    with duckdb.connect(str(db), read_only=True) as conn:
        assert conn.execute("select count(*) from raw.ratings where drop_date = ?", [day]).fetchone()[
            0
        ] == len(kept)
        merged = table_stats(conn, MARTS_SCHEMA, list(MART_NAMES))
    assert merged == whole_rebuild_stats(db)


def test_bad_drops_fail_before_anything_is_published(drops_home) -> None:
    db, folder, drops = drops_home
    day = sorted(drops)[0]
    before = published_tables(db)
    frame = drops[day].copy()
    frame.loc[frame.index[4], "item_id"] = "no-such-item"
    frame.to_csv(folder / day / "interactions.csv", index=False)
    (folder / day / "interactions.parquet").unlink()
    unknown = run_drops(day=day)
    assert not unknown.success
    failures = [e for e in unknown.all_events if e.event_type_value == "STEP_FAILURE"]
    [message] = [e.event_specific_data.error.to_string() for e in failures]
    assert "interactions.csv, line 6, column 'item_id'" in message and "no-such-item" in message, message

    with duckdb.connect(str(db), read_only=True) as conn:  # an event raw.ratings already holds
        old = conn.execute("select user_id, item_id, ts from raw.ratings limit 1").fetchone()
    frame = drops[day].copy()
    frame.loc[frame.index[0], ["user_id", "item_id", "timestamp"]] = list(old)
    frame.to_csv(folder / day / "interactions.csv", index=False)
    again = run_drops(day=day)
    assert not again.success
    assert any("already_loaded" in m and "Nothing was published" in m for m in step_failure_messages(again))
    assert published_tables(db).keys() == before.keys()
    after = published_tables(db)
    for name, frame in before.items():
        assert frame.equals(after[name]), name


def test_split_drops_keeps_the_newest_events_out() -> None:
    log = generate_log(LogSpec(events=3000, users=100, items=300, seed=1))
    base, drops = log.split_drops(0.1, 2)
    assert len(base.interactions) + sum(len(f) for f in drops.values()) == len(log.interactions)
    assert sum(len(f) for f in drops.values()) == round(len(log.interactions) * 0.1) and len(drops) == 2
    assert base.interactions["timestamp"].max() <= min(f["timestamp"].min() for f in drops.values())


def test_a_backfill_over_many_days_is_one_dg_launch(drops_home, tmp_path: Path) -> None:
    """README's command: `dg launch --job daily_drops --partition-range FIRST...LAST` runs every day of the
    range (days without a drop folder count as empty) in one run, then the incremental marts build."""
    db, folder, drops = drops_home
    days = sorted(drops)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "M6REC_DROPS": str(folder)}
    cmd = [str(Path(sys.executable).parent / "dg"), "launch", "--job", "daily_drops"]
    cmd += ["--partition-range", f"{days[0]}...{days[-1]}"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Incremental build: 3 daily drop(s)" in done.stderr + done.stdout
    # the same audit schema as the data half's build, the same vars: dbt reused that build's parse
    assert "(into marts_audit_1)" in done.stderr + done.stdout
    assert "Unable to do partial parsing" not in done.stderr + done.stdout
    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute("select count(*) from raw.ratings where drop_date is not null").fetchone()[0]
        info = read_build_info(conn)
    assert rows == sum(len(f) for f in drops.values()) and info["delta"]["drop_dates"] == days
