"""The embedded DuckDB warehouse: lock-aware connections and write-audit-publish.

A load (raw tables) or a dbt build (marts) is first written into a per-run audit schema
(:func:`audit_schema`); the blocking quality suites read it there; :func:`publish_tables` copies a
passing set over the published schema in one transaction. A failing set never reaches ``raw.*`` or
``marts.*`` and its audit schema stays for inspection.

DuckDB allows one writing process per file. A connection attempt that meets another process's
lock waits (bounded) and then fails with a message that says so, instead of a bare IOException.
"""

from __future__ import annotations

import hashlib
import json
import os
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
MARTS_SCHEMA = "marts"
BUILD_INFO_TABLE = "build_info"
BUILD_INFO_DDL = "published_at TIMESTAMP, info JSON, fingerprint VARCHAR, tables JSON"
LOAD_LOG_DDL = (
    "loaded_at TIMESTAMP, source VARCHAR, source_format VARCHAR, files JSON, "
    "ratings BIGINT, items BIGINT, users BIGINT"
)


class WarehouseLockedError(RuntimeError):
    """Another process holds the DuckDB file's write lock for longer than we were willing to wait."""


def memory_limit() -> str:
    """DuckDB's memory cap for every m6rec connection (``$M6REC_DUCKDB_MEMORY_LIMIT``, e.g. ``8GB``)."""
    return os.environ.get("M6REC_DUCKDB_MEMORY_LIMIT", "4GB")


@contextmanager
def connect(
    path: Path | str, *, read_only: bool = False, wait_s: float = 120.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, waiting up to ``wait_s`` for another process's lock to clear. Its memory is
    capped at ``$M6REC_DUCKDB_MEMORY_LIMIT`` (default 4GB, as dbt's profile): past it DuckDB spills
    to disk instead of growing with the log."""
    path = str(path)
    if path != ":memory:" and not read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    deadline, delay = time.monotonic() + wait_s, 0.2
    while True:
        try:
            conn = duckdb.connect(path, read_only=read_only, config={"memory_limit": memory_limit()})
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


def audit_schema(layer: str, run_id: str) -> str:
    """The schema one run writes ``layer`` (``raw`` or ``marts``) into before its suites pass: one per
    run, so two runs at once never audit or publish each other's tables."""
    token = "".join(ch for ch in run_id.lower() if ch.isalnum())[:12] or "manual"
    return f"{layer}_audit_{token}"


def stage_raw_tables(conn: duckdb.DuckDBPyConnection, dataset: RawDataset, source: str, schema: str) -> None:
    """Write a load into ``schema`` (the audit step reads it there), with a one-row ``load_info`` table
    that :func:`publish_tables` appends to ``raw.load_log`` when the load is published."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    frames = {"ratings": dataset.ratings, "items": dataset.items, "users": dataset.users}
    conn.execute("BEGIN TRANSACTION")
    try:
        for name, frame in frames.items():
            conn.register(f"_incoming_{name}", frame)
            columns = ", ".join(col.split()[0] for col in RAW_DDL[name].split(", "))
            conn.execute(f"CREATE OR REPLACE TABLE {schema}.{name} ({RAW_DDL[name]})")
            conn.execute(f"INSERT INTO {schema}.{name} SELECT {columns} FROM _incoming_{name}")
            conn.unregister(f"_incoming_{name}")
        conn.execute(f"CREATE OR REPLACE TABLE {schema}.load_info ({LOAD_LOG_DDL})")
        counts = dataset.row_counts()
        conn.execute(
            f"INSERT INTO {schema}.load_info VALUES (?, ?, ?, ?, ?, ?, ?)",
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


def schema_exists(conn: duckdb.DuckDBPyConnection, schema: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", [schema]
        ).fetchone()[0]
    )


def fingerprint(conn: duckdb.DuckDBPyConnection, schema: str, tables: list[str]) -> str:
    """A content hash of ``tables``: the same rows give the same value in any order or file, so a
    bundle can say exactly which marts it was trained on."""
    digest = hashlib.sha256()
    for name in sorted(tables):
        count, total = conn.execute(
            f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM {schema}.{name} AS t"
        ).fetchone()
        digest.update(f"{name}:{count}:{total};".encode())
    return digest.hexdigest()[:16]


def publish_tables(
    conn: duckdb.DuckDBPyConnection,
    source_schema: str,
    target_schema: str,
    tables: list[str],
    *,
    build_info: dict | None = None,
) -> str:
    """Copy audited ``tables`` from ``source_schema`` over ``target_schema`` in one transaction (readers
    see the old set or the new, never a mix), then drop the audit schema. A raw load's ``load_info`` row
    is appended to ``load_log``; ``build_info`` (the marts' dbt vars, run id) becomes the one-row
    ``build_info`` table beside them with the published tables' fingerprint. Returns that fingerprint."""
    missing = [t for t in tables if not _table_exists(conn, source_schema, t)]
    if missing:
        raise LookupError(
            f"cannot publish {target_schema}: {', '.join(f'{source_schema}.{t}' for t in missing)} "
            "missing (the audit step of this run did not write it)"
        )
    digest = fingerprint(conn, source_schema, tables)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {target_schema}")
    conn.execute("BEGIN TRANSACTION")
    try:
        for name in tables:
            ddl = RAW_DDL.get(name) if target_schema == RAW_SCHEMA else None
            if ddl:  # keep the raw contract's types and NOT NULLs
                conn.execute(f"CREATE OR REPLACE TABLE {target_schema}.{name} ({ddl})")
                conn.execute(f"INSERT INTO {target_schema}.{name} FROM {source_schema}.{name}")
            else:
                conn.execute(f"CREATE OR REPLACE TABLE {target_schema}.{name} AS FROM {source_schema}.{name}")
        if _table_exists(conn, source_schema, "load_info"):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {target_schema}.load_log ({LOAD_LOG_DDL})")
            conn.execute(f"INSERT INTO {target_schema}.load_log FROM {source_schema}.load_info")
        if build_info is not None:
            conn.execute(f"CREATE OR REPLACE TABLE {target_schema}.{BUILD_INFO_TABLE} ({BUILD_INFO_DDL})")
            conn.execute(
                f"INSERT INTO {target_schema}.{BUILD_INFO_TABLE} VALUES (?, ?, ?, ?)",
                [datetime.now(UTC).replace(tzinfo=None), json.dumps(build_info), digest, json.dumps(tables)],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute(f"DROP SCHEMA IF EXISTS {source_schema} CASCADE")
    return digest


def read_build_info(conn: duckdb.DuckDBPyConnection, schema: str = MARTS_SCHEMA) -> dict | None:
    """What the published marts were built from: ``{"published_at", "fingerprint", "tables", **info}``
    with ``info`` as :func:`publish_tables` got it (``dbt_vars``, ``run_id``); None before any publish."""
    if not _table_exists(conn, schema, BUILD_INFO_TABLE):
        return None
    row = conn.execute(
        f"SELECT published_at, info, fingerprint, tables FROM {schema}.{BUILD_INFO_TABLE}"
    ).fetchone()
    if row is None:
        return None
    return {
        **json.loads(row[1]),
        "published_at": row[0].isoformat(),
        "fingerprint": row[2],
        "tables": json.loads(row[3]),
    }


def replace_raw_tables(conn: duckdb.DuckDBPyConnection, dataset: RawDataset, source: str) -> None:
    """Stage and publish a load in one go, with no audit in between (tests and notebooks seeding a
    warehouse; the pipeline audits between the two steps)."""
    schema = audit_schema(RAW_SCHEMA, "direct")
    stage_raw_tables(conn, dataset, source, schema)
    publish_tables(conn, schema, RAW_SCHEMA, list(RAW_DDL))


def _table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchone()[0]
    )


def table_counts(conn: duckdb.DuckDBPyConnection, schema: str) -> dict[str, int]:
    """Row count of every table in a schema (for asset metadata)."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema]
        ).fetchall()
    ]
    return {n: conn.execute(f'SELECT count(*) FROM {schema}."{n}"').fetchall()[0][0] for n in names}
