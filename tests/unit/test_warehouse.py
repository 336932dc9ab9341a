"""The raw swap is all-or-nothing, and a second writer gets a clear message instead of a corrupt file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from m6rec.data.sources import read_source
from m6rec.data.tabular import DataFormatError
from m6rec.data.warehouse import (
    WarehouseLockedError,
    claim_audit_slot,
    connect,
    fingerprint,
    held_audit_schema,
    merge_delta,
    replace_raw_tables,
    table_counts,
    table_exists,
    table_stats,
)
from tests.synthetic import INTERACTIONS


def test_swap_then_failed_loads_leave_previous_tables(tmp_path: Path, write_generic, monkeypatch) -> None:
    db = tmp_path / "w.duckdb"
    good = write_generic("good")
    with connect(db) as conn:
        replace_raw_tables(conn, read_source(good), str(good))
    before = {"ratings": 10, "items": 5, "users": 4, "load_log": 1}
    with connect(db) as conn:
        assert table_counts(conn, "raw") == before

    # 1. A malformed file fails while reading, before any write.
    bad = write_generic("bad", interactions=INTERACTIONS.replace("u1,i3,1020,4", "u1,i3,1020,x"))
    with pytest.raises(DataFormatError):
        replace_raw_tables(None, read_source(bad), str(bad))  # type: ignore[arg-type]

    # 2. A failure in the middle of the swap (after ratings were replaced) rolls everything back.
    bigger = read_source(write_generic("bigger", interactions=INTERACTIONS + "u4,i5,1900,2\n"))
    bigger.users = bigger.users.drop(columns=["zip"])  # the users insert fails after ratings/items
    with connect(db) as conn, pytest.raises(Exception, match="zip"):
        replace_raw_tables(conn, bigger, "bigger")
    with connect(db, read_only=True) as conn:
        assert table_counts(conn, "raw") == before
        assert conn.execute("select count(*) from raw.ratings where item_id = 'i5'").fetchall() == [(0,)]


def test_second_writer_waits_then_fails_clearly(tmp_path: Path) -> None:
    db = tmp_path / "locked.duckdb"
    with connect(db) as conn:
        conn.execute("create table t as select 1 as x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import duckdb, sys
        con = duckdb.connect({str(db)!r})
        print("locked", flush=True)
        sys.stdin.read()  # holds the lock until the test lets go (no sleep that could run out)
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(WarehouseLockedError, match=r"locked by another process for more than 1s"),
            connect(db, wait_s=1.0),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with connect(db, wait_s=60) as conn:  # free again once the other writer is gone
        assert conn.execute("select x from t").fetchall() == [(1,)]


def test_connections_cap_duckdb_memory(tmp_path: Path, monkeypatch) -> None:
    """Past the cap DuckDB spills to disk instead of growing with the log; the cap is configurable."""
    with connect(tmp_path / "w.duckdb") as conn:
        assert conn.execute("select current_setting('memory_limit')").fetchone()[0] == "3.7 GiB"
    monkeypatch.setenv("M6REC_DUCKDB_MEMORY_LIMIT", "256MB")
    with connect(tmp_path / "w.duckdb") as conn:
        assert conn.execute("select current_setting('memory_limit')").fetchone()[0] == "244.1 MiB"


def test_a_warehouse_from_before_numbered_loads_gets_the_columns(tmp_path: Path) -> None:
    """raw.ratings / raw.load_log written by an older m6rec: the first numbered load adds the columns
    (old rows keep NULL, so the next dbt build is a whole one) and counts from 1."""
    from m6rec.data.warehouse import next_load_seq

    with connect(tmp_path / "old.duckdb") as conn:
        conn.execute("create schema raw")
        conn.execute("create table raw.ratings (user_id varchar, item_id varchar, rating double, ts bigint)")
        conn.execute("create table raw.load_log (loaded_at timestamp, source varchar)")
        conn.execute("insert into raw.load_log values (now(), 'old')")
        assert next_load_seq(conn) == 1
        for table in ("ratings", "load_log"):
            columns = [r[0] for r in conn.execute(f"describe raw.{table}").fetchall()]
            assert columns[-2:] == ["load_seq", "drop_date"], table


def test_merge_delta_replaces_keyed_rows_and_keeps_the_fingerprint_exact(tmp_path: Path) -> None:
    """A keyed table: the audited rows replace the published rows of their keys, a key whose new row
    fails the keep condition (a pair count of 0) is removed, and the fingerprint updated from the delta
    equals the fingerprint of the merged tables read whole."""
    with connect(tmp_path / "w.duckdb") as conn:
        conn.execute("CREATE SCHEMA marts; CREATE SCHEMA audit")
        conn.execute("CREATE TABLE marts.pairs (a VARCHAR, b VARCHAR, n BIGINT)")
        conn.execute("INSERT INTO marts.pairs VALUES ('x','y',3), ('x','z',1), ('y','z',2)")
        # a list column too, as ctr_examples has (the removed rows' hashes come back from the DELETE)
        conn.execute("CREATE TABLE marts.events (user_id VARCHAR, item_id VARCHAR, hist VARCHAR[])")
        conn.execute("INSERT INTO marts.events VALUES ('u1','x',['a']), ('u2','y',['b','c'])")
        previous = table_stats(conn, "marts", ["pairs", "events"])
        conn.execute("CREATE TABLE audit.pairs (a VARCHAR, b VARCHAR, n BIGINT)")
        conn.execute("INSERT INTO audit.pairs VALUES ('x','y',4), ('x','z',0), ('z','x',1)")
        conn.execute("CREATE TABLE audit.events AS SELECT 'u2' AS user_id, 'z' AS item_id, ['y'] AS hist")
        conn.execute("CREATE TABLE audit.touched AS SELECT 'u2' AS user_id")
        digest = merge_delta(
            conn,
            "audit",
            "marts",
            per_user=["events"],
            whole=[],
            users_table="touched",
            build_info={},
            previous_stats=previous,
            keyed={"pairs": (("a", "b"), "n > 0")},
        )
        pairs = conn.execute("SELECT a, b, n FROM marts.pairs ORDER BY a, b").fetchall()
        assert pairs == [("x", "y", 4), ("y", "z", 2), ("z", "x", 1)]
        events = conn.execute("SELECT * FROM marts.events ORDER BY 1").fetchall()
        assert events == [("u1", "x", ["a"]), ("u2", "z", ["y"])]
        assert digest == fingerprint(conn, "marts", ["pairs", "events"])
        assert not table_exists(conn, "audit", "pairs")  # the audit schema is dropped


def test_a_marts_audit_schema_is_held_by_one_run_and_taken_again_once_dropped(tmp_path: Path) -> None:
    """Numbered audit schemas (dbt reuses its parse of a schema name it has seen): a run keeps the one it
    claimed, a second run at the same time gets the next, a rejected build's schema stays taken, and a
    published (dropped) one is the next run's."""
    with connect(tmp_path / "w.duckdb") as conn:
        assert held_audit_schema(conn, "marts", "run-a") is None  # no slot was ever claimed
        assert claim_audit_slot(conn, "marts", "run-a") == "marts_audit_1"
        assert claim_audit_slot(conn, "marts", "run-a") == "marts_audit_1"  # the step started again
        assert claim_audit_slot(conn, "marts", "run-b") == "marts_audit_2"  # run-a still holds 1
        assert held_audit_schema(conn, "marts", "run-b") == "marts_audit_2"
        conn.execute("drop schema marts_audit_1 cascade")  # run-a published
        assert held_audit_schema(conn, "marts", "run-a") is None
        assert claim_audit_slot(conn, "marts", "run-c") == "marts_audit_1"
        assert claim_audit_slot(conn, "raw", "run-c") == "raw_audit_1"  # layers number apart
        assert held_audit_schema(conn, "marts", "run-b") == "marts_audit_2"  # rejected: kept, still held


def test_user_index_is_numbered_as_the_marts_are_read(tmp_path: Path) -> None:
    """marts.user_profiles stores no index (a drop's new user would renumber every published row):
    load_rec_data numbers users densely, numeric ids in numeric order then the rest, and the events
    carry the same numbers."""
    from m6rec.data.marts import load_rec_data

    db = tmp_path / "w.duckdb"
    with connect(db) as conn:
        conn.execute("create schema marts")
        conn.execute("create table marts.item_catalogue as select 'i0' as item_id, 0 as item_idx")
        conn.execute(
            "create table marts.user_profiles as "
            "select * from (values ('b'), ('10'), ('9'), ('a')) as t(user_id) order by user_id"
        )
        conn.execute(
            "create table marts.splits as select user_id, 'i0' as item_id, 4.0 as rating, 0 as ts, "
            "0 as position, 'train' as split, true as is_like from marts.user_profiles"
        )
    data = load_rec_data(db)
    numbered = {"9": 0, "10": 1, "a": 2, "b": 3}
    assert data.users[["user_id", "user_idx"]].values.tolist() == [list(kv) for kv in numbered.items()]
    assert dict(zip(data.events["user_id"], data.events["user_idx"], strict=True)) == numbered
