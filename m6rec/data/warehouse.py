"""The embedded DuckDB warehouse: lock-aware connections and the atomic raw-table swap.

DuckDB allows one writing process per file. A connection attempt that meets another process's
lock waits (bounded) and then fails with a message that says so, instead of a bare IOException.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from m6rec.data.sources import RawDataset

RAW_SCHEMA = "raw"
RAW_DDL = {
    "ratings": "user_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, rating DOUBLE, ts BIGINT NOT NULL, "
    "event_seq BIGINT NOT NULL",
    "items": "item_id VARCHAR NOT NULL, title VARCHAR NOT NULL, release_year INTEGER, genres VARCHAR[], "
    "attributes JSON",
    "users": "user_id VARCHAR NOT NULL, age INTEGER, gender VARCHAR, occupation VARCHAR, zip VARCHAR, "
    "attributes JSON",
}
LOAD_LOG_DDL = (
    "loaded_at TIMESTAMP, source VARCHAR, source_format VARCHAR, files JSON, "
    "ratings BIGINT, items BIGINT, users BIGINT"
)


class WarehouseLockedError(RuntimeError):
    """Another process holds the DuckDB file's write lock for longer than we were willing to wait."""


@contextmanager
def connect(
    path: Path | str, *, read_only: bool = False, wait_s: float = 120.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, waiting up to ``wait_s`` for another process's lock to clear."""
    path = str(path)
    if path != ":memory:" and not read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    deadline, delay = time.monotonic() + wait_s, 0.2
    while True:
        try:
            conn = duckdb.connect(path, read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() and "in use" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseLockedError(
                    f"DuckDB warehouse {path} is locked by another process for more than {wait_s:.0f}s "
                    f"(DuckDB allows one writer at a time): {exc}"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        yield conn
    finally:
        conn.close()


def replace_raw_tables(conn: duckdb.DuckDBPyConnection, dataset: RawDataset, source: str) -> None:
    """Swap in new raw tables in one transaction: readers see the old tables or the new, never a mix."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {RAW_SCHEMA}")
    frames = {"ratings": dataset.ratings, "items": dataset.items, "users": dataset.users}
    conn.execute("BEGIN TRANSACTION")
    try:
        for name, frame in frames.items():
            conn.register(f"_incoming_{name}", frame)
            columns = ", ".join(col.split()[0] for col in RAW_DDL[name].split(", "))
            conn.execute(f"CREATE OR REPLACE TABLE {RAW_SCHEMA}.{name} ({RAW_DDL[name]})")
            conn.execute(f"INSERT INTO {RAW_SCHEMA}.{name} SELECT {columns} FROM _incoming_{name}")
            conn.unregister(f"_incoming_{name}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {RAW_SCHEMA}.load_log ({LOAD_LOG_DDL})")
        counts = dataset.row_counts()
        conn.execute(
            f"INSERT INTO {RAW_SCHEMA}.load_log VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                datetime.now(UTC).replace(tzinfo=None),
                source,
                dataset.source_format,
                json.dumps([str(f) for f in dataset.files]),
                counts["ratings"],
                counts["items"],
                counts["users"],
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def table_counts(conn: duckdb.DuckDBPyConnection, schema: str) -> dict[str, int]:
    """Row count of every table in a schema (for asset metadata)."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema]
        ).fetchall()
    ]
    return {n: conn.execute(f'SELECT count(*) FROM {schema}."{n}"').fetchall()[0][0] for n in names}
