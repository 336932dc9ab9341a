"""Daily drops: the events that arrived on one day, appended to ``raw.ratings`` without re-reading the
whole log.

A drop is a folder ``<drops>/<YYYY-MM-DD>/`` with ``interactions*.csv|tsv|parquet`` in the generic
format (``user_id, item_id, timestamp[, rating]``); its items and users must already be in ``raw.items``
/ ``raw.users`` (a whole load brings the catalogue). Write-audit-publish as for a whole load: the drop is
staged in the run's audit schema (:func:`stage_drops`), the blocking suite checks it there, and
:func:`publish_drops` replaces those days' rows of ``raw.ratings`` in one transaction, numbering the
load in ``raw.load_log`` so that the next dbt build knows what is new.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pandas as pd

from m6rec.data.sources import _files, _ratings
from m6rec.data.tabular import LINE, DataFormatError, read_table
from m6rec.data.warehouse import RAW_DDL, RAW_SCHEMA, append_load_log, next_load_seq, transaction

DROP_TABLE = "ratings_drop"


def drop_folder(root: Path, day: str) -> Path:
    return Path(root) / day


def read_drop(folder: Path) -> pd.DataFrame:
    """One day's events in the raw contract (without ``event_seq``), with each row's file and line, or
    :class:`DataFormatError` naming the file, line and value of the first row that does not parse."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(folder, "no such drop folder (expected <drops>/<YYYY-MM-DD>/interactions.*)")
    paths = _files(folder, "interactions")
    if not paths:
        raise DataFormatError(folder, "no interactions*.csv|tsv|parquet file in this drop")
    columns = {"user": "user_id", "item": "item_id", "ts": "timestamp", "rating": "rating"}
    return pd.concat([_ratings(read_table(p), **columns) for p in paths], ignore_index=True)


def _check_known_ids(conn: duckdb.DuckDBPyConnection, relation: str) -> None:
    """The first event of ``relation`` whose item (or user, when raw.users has any) raw.* does not
    know, as a :class:`DataFormatError` with its file and line (an anti-join: no id set in Python)."""
    checks = [("item_id", "items")]
    if conn.execute(f"select count(*) from {RAW_SCHEMA}.users").fetchone()[0]:
        checks.append(("user_id", "users"))
    for column, table in checks:
        row = conn.execute(
            f"select _file, {LINE}, {column} from {relation} as d anti join {RAW_SCHEMA}.{table} using ({column}) "
            f"order by _file, {LINE} limit 1"
        ).fetchone()
        if row:
            raise DataFormatError(
                row[0], f"{column} not found in {RAW_SCHEMA}.{table}", line=int(row[1]), column=column, value=row[2]
            )


def stage_drops(conn: duckdb.DuckDBPyConnection, root: Path, days: list[str], schema: str) -> dict[str, int]:
    """Read the drops of ``days`` and write them, with their ``drop_date``, to ``schema.ratings_drop``
    (``event_seq`` numbers the rows within this load; publish moves it past the published ones).
    A day without a folder had no events; none of them having one is an error. Returns events per day."""
    columns = {
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
            [RAW_SCHEMA, "ratings"],
        ).fetchall()
    }
    if not columns:
        raise LookupError("no raw.ratings yet: load the whole log (data_pipeline job) before any daily drop")
    if "drop_date" not in columns:
        raise LookupError("raw.ratings predates daily drops (no drop_date column): run data_pipeline once")
    frames, counts = [], {}
    for day in sorted(days):
        if not drop_folder(root, day).exists():  # nothing arrived that day (a backfill spans such days)
            counts[day] = 0
            continue
        frame = read_drop(drop_folder(root, day))
        frame["drop_date"] = date.fromisoformat(day)
        frames.append(frame)
        counts[day] = len(frame)
    if not frames:
        raise DataFormatError(root, f"no drop folder for any of {days[0]}..{days[-1]} (<drops>/<YYYY-MM-DD>/)")
    staged = pd.concat(frames, ignore_index=True)
    staged["event_seq"] = range(len(staged))
    staged["files"] = staged["_file"]
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    conn.register("_incoming_drop", staged)
    try:
        _check_known_ids(conn, "_incoming_drop")
        conn.execute(f"CREATE OR REPLACE TABLE {schema}.{DROP_TABLE} ({RAW_DDL['ratings']}, files VARCHAR)")
        conn.execute(
            f"INSERT INTO {schema}.{DROP_TABLE} BY NAME SELECT * EXCLUDE (_file, {LINE}) FROM _incoming_drop"
        )
    finally:
        conn.unregister("_incoming_drop")
    return counts


def publish_drops(conn: duckdb.DuckDBPyConnection, schema: str) -> dict[str, int]:
    """In one transaction: delete the staged days' rows from ``raw.ratings`` (a re-run of a day replaces
    it), append the staged rows with ``event_seq`` after every published one and this load's number,
    and log one ``raw.load_log`` row per day. Then drop the audit schema. Returns the events per day."""
    table = f"{schema}.{DROP_TABLE}"
    days = {
        str(d): n
        for d, n in conn.execute(f"select drop_date, count(*) from {table} group by 1 order by 1").fetchall()
    }
    with transaction(conn):
        seq = next_load_seq(conn, RAW_SCHEMA)
        conn.execute(f"DELETE FROM {RAW_SCHEMA}.ratings WHERE drop_date IN (SELECT drop_date FROM {table})")
        base = conn.execute(f"select coalesce(max(event_seq) + 1, 0) from {RAW_SCHEMA}.ratings").fetchone()[0]
        conn.execute(
            f"INSERT INTO {RAW_SCHEMA}.ratings BY NAME SELECT * EXCLUDE (files) "
            f"REPLACE (event_seq + {int(base)} AS event_seq, {seq} AS load_seq) FROM {table}"
        )
        files = conn.execute(f"select drop_date, list(distinct files) from {table} group by 1").fetchall()
        now = datetime.now(UTC).replace(tzinfo=None)
        for day, paths in files:
            append_load_log(
                conn,
                RAW_SCHEMA,
                "SELECT ? AS loaded_at, ? AS source, 'drop' AS source_format, ?::json AS files, "
                "? AS ratings, 0 AS items, 0 AS users, ? AS load_seq, ?::date AS drop_date",
                [now, str(Path(min(paths)).parent), json.dumps(sorted(paths)), days[str(day)], seq, day],
            )
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return days
