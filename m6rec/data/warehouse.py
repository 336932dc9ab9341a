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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from m6rec.data.sources import RawDataset

RAW_SCHEMA = "raw"
RAW_DDL = {
    # load_seq: the raw.load_log entry that brought the row; drop_date: the daily drop it came in (NULL
    # for a whole load). The incremental marts build reads both to find what is new.
    "ratings": "user_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, rating DOUBLE, ts BIGINT NOT NULL, "
    "event_seq BIGINT NOT NULL, load_seq BIGINT, drop_date DATE",
    "items": "item_id VARCHAR NOT NULL, title VARCHAR NOT NULL, release_year INTEGER, genres VARCHAR[], "
    "attributes JSON",
    "users": "user_id VARCHAR NOT NULL, age INTEGER, gender VARCHAR, occupation VARCHAR, zip VARCHAR, "
    "attributes JSON",
}
# Columns a load does not bring: publish numbers the load and the daily-drop path dates it.
ASSIGNED_AT_PUBLISH = ("load_seq", "drop_date")
MARTS_SCHEMA = "marts"
BUILD_INFO_TABLE = "build_info"
BUILD_INFO_DDL = "published_at TIMESTAMP, info JSON, fingerprint VARCHAR, tables JSON, table_stats JSON"
LOAD_LOG_DDL = (
    "loaded_at TIMESTAMP, source VARCHAR, source_format VARCHAR, files JSON, "
    "ratings BIGINT, items BIGINT, users BIGINT, load_seq BIGINT, drop_date DATE"
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


def contract_columns(table: str) -> list[str]:
    """The column names of a raw table, in contract order."""
    return [column.split()[0] for column in RAW_DDL[table].split(", ")]


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One DuckDB transaction around the block: committed when it ends, rolled back on any error (readers
    see all of it or none)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def audit_schema(layer: str, run_id: str) -> str:
    """The schema one run writes the raw layer into before its suites pass: one per run, so two runs at
    once never audit or publish each other's tables. (The marts, which dbt writes, take a numbered
    schema: :func:`claim_audit_slot`.)"""
    token = "".join(ch for ch in run_id.lower() if ch.isalnum())[:12] or "manual"
    return f"{layer}_audit_{token}"


AUDIT_SLOTS_TABLE = "main.audit_slots"  # which run holds which numbered audit schema of a layer


def claim_audit_slot(conn: duckdb.DuckDBPyConnection, layer: str, run_id: str) -> str:
    """The audit schema run ``run_id`` writes ``layer`` into, created now: the one the run already holds,
    else the first of ``<layer>_audit_1``, ``_2``, ... that does not exist (publish drops a passing
    build's schema, so the next run takes the same number; a rejected build keeps its schema, and its
    number, for inspection). Two runs at once never hold the same schema: DuckDB lets one process write.

    Numbered rather than named after the run (as :func:`audit_schema` names the raw layer's): dbt bakes
    the schema name into its parsed project, and with a name it has seen before it reuses its saved
    parse (``partial_parse.msgpack``) — a new name each run made every build parse the whole project
    again, a cost each daily drop paid whatever its size (docs/benchmarks.md, the cost curve)."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {AUDIT_SLOTS_TABLE} "
        "(schema_name VARCHAR PRIMARY KEY, layer VARCHAR, run_id VARCHAR, claimed_at TIMESTAMP)"
    )
    held = held_audit_schema(conn, layer, run_id)
    if held is not None:
        return held
    with transaction(conn):
        number = 1
        while schema_exists(conn, f"{layer}_audit_{number}"):
            number += 1
        schema = f"{layer}_audit_{number}"
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"INSERT OR REPLACE INTO {AUDIT_SLOTS_TABLE} VALUES (?, ?, ?, now()::TIMESTAMP)",
            [schema, layer, run_id],
        )
    return schema


def held_audit_schema(conn: duckdb.DuckDBPyConnection, layer: str, run_id: str) -> str | None:
    """The audit schema of ``layer`` that :func:`claim_audit_slot` gave run ``run_id``, while it exists."""
    if not table_exists(conn, *AUDIT_SLOTS_TABLE.split(".")):
        return None
    row = conn.execute(
        f"SELECT s.schema_name FROM {AUDIT_SLOTS_TABLE} AS s "
        "JOIN information_schema.schemata AS i ON i.schema_name = s.schema_name "
        "WHERE s.layer = ? AND s.run_id = ?",
        [layer, run_id],
    ).fetchone()
    return row[0] if row else None


def stage_raw_tables(conn: duckdb.DuckDBPyConnection, dataset: RawDataset, source: str, schema: str) -> None:
    """Write a load into ``schema`` (the audit step reads it there), with a one-row ``load_info`` table
    that :func:`publish_tables` appends to ``raw.load_log`` when the load is published."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    frames = {"ratings": dataset.ratings, "items": dataset.items, "users": dataset.users}
    with transaction(conn):
        for name, frame in frames.items():
            conn.register(f"_incoming_{name}", frame)
            columns = ", ".join(c for c in contract_columns(name) if c not in ASSIGNED_AT_PUBLISH)
            conn.execute(f"CREATE OR REPLACE TABLE {schema}.{name} ({RAW_DDL[name]})")
            conn.execute(f"INSERT INTO {schema}.{name} ({columns}) SELECT {columns} FROM _incoming_{name}")
            conn.unregister(f"_incoming_{name}")
        conn.execute(f"CREATE OR REPLACE TABLE {schema}.load_info ({LOAD_LOG_DDL})")
        counts = dataset.row_counts()
        conn.execute(
            f"INSERT INTO {schema}.load_info (loaded_at, source, source_format, files, ratings, items, "
            "users) VALUES (?, ?, ?, ?, ?, ?, ?)",
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


def schema_exists(conn: duckdb.DuckDBPyConnection, schema: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", [schema]
        ).fetchone()[0]
    )


def relation_stats(conn: duckdb.DuckDBPyConnection, relation: str) -> list[int]:
    """``[row count, sum of row hashes]`` of a table or ``(select ...)``: order-free, and additive, so a
    merge of a delta can update it from the rows it removes and adds without reading the whole table."""
    [(count, total)] = conn.execute(
        f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM {relation} AS t"
    ).fetchall()
    return [int(count), int(total)]


def table_stats(conn: duckdb.DuckDBPyConnection, schema: str, tables: list[str]) -> dict[str, list[int]]:
    """:func:`relation_stats` of each of ``tables``."""
    return {name: relation_stats(conn, f"{schema}.{name}") for name in tables}


def digest_of(stats: dict[str, list[int]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(stats):
        count, total = stats[name]
        digest.update(f"{name}:{count}:{total};".encode())
    return digest.hexdigest()[:16]


def fingerprint(conn: duckdb.DuckDBPyConnection, schema: str, tables: list[str]) -> str:
    """A content hash of ``tables``: the same rows give the same value in any order or file, so a
    bundle can say exactly which marts it was trained on."""
    return digest_of(table_stats(conn, schema, tables))


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
    missing = [t for t in tables if not table_exists(conn, source_schema, t)]
    if missing:
        raise LookupError(
            f"cannot publish {target_schema}: {', '.join(f'{source_schema}.{t}' for t in missing)} "
            "missing (the audit step of this run did not write it)"
        )
    stats = table_stats(conn, source_schema, tables)
    digest = digest_of(stats)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {target_schema}")
    with transaction(conn):
        is_load = table_exists(conn, source_schema, "load_info")
        load_seq = next_load_seq(conn, target_schema) if is_load else None
        for name in tables:
            ddl = RAW_DDL.get(name) if target_schema == RAW_SCHEMA else None
            if ddl:  # keep the raw contract's types and NOT NULLs
                conn.execute(f"CREATE OR REPLACE TABLE {target_schema}.{name} ({ddl})")
                seq = "" if load_seq is None or name != "ratings" else f" REPLACE ({load_seq} AS load_seq)"
                conn.execute(f"INSERT INTO {target_schema}.{name} SELECT *{seq} FROM {source_schema}.{name}")
            else:
                conn.execute(f"CREATE OR REPLACE TABLE {target_schema}.{name} AS FROM {source_schema}.{name}")
        if load_seq is not None:
            log_row = f"SELECT * REPLACE ({load_seq} AS load_seq) FROM {source_schema}.load_info"
            append_load_log(conn, target_schema, log_row)
        if build_info is not None:
            write_build_info(conn, target_schema, build_info, stats)
    conn.execute(f"DROP SCHEMA IF EXISTS {source_schema} CASCADE")
    return digest


def merge_delta(
    conn: duckdb.DuckDBPyConnection,
    source_schema: str,
    target_schema: str,
    *,
    per_user: list[str],
    whole: list[str],
    users_table: str,
    build_info: dict,
    previous_stats: dict[str, list[int]],
    keyed: Mapping[str, tuple[Sequence[str], str]] | None = None,
) -> str:
    """Publish an incremental build in one transaction: in each ``per_user`` table replace the rows of
    the users in ``source_schema.<users_table>`` by the audited ones; in each ``keyed`` table
    (``name: (key columns, keep condition)``) replace the rows of the keys the audited table holds by
    its rows that meet the condition; replace each ``whole`` table; and write ``build_info`` with the
    fingerprint updated from the rows removed and added (the published tables are never re-read whole).
    Then drop the audit schema. Returns the new fingerprint."""
    keyed = dict(keyed or {})
    stats = {name: list(previous_stats[name]) for name in [*per_user, *keyed]}
    users = f"(SELECT user_id FROM {source_schema}.{users_table})"
    replaced = {name: f"user_id IN {users}" for name in per_user}
    added_rows = {name: f"{source_schema}.{name}" for name in per_user}
    for name, (keys, keep) in keyed.items():
        columns = ", ".join(keys)
        replaced[name] = f"({columns}) IN (SELECT {columns} FROM {source_schema}.{name})"
        added_rows[name] = f"(SELECT * FROM {source_schema}.{name} WHERE {keep})"
    with transaction(conn):
        for name, where in replaced.items():
            # the deleted rows' hashes come back from the DELETE itself (a second scan of a big table cost
            # more than the whole delete; returning the rows themselves, lists and all, cost more again)
            gone = conn.sql(
                f"DELETE FROM {target_schema}.{name} AS t WHERE {where} RETURNING hash(t) AS row_hash"
            ).to_arrow_table()
            conn.register("merge_delta_removed", gone)
            [(count, total)] = conn.execute(
                "SELECT count(*), coalesce(sum(row_hash::HUGEINT), 0) FROM merge_delta_removed"
            ).fetchall()
            conn.unregister("merge_delta_removed")
            removed = [int(count), int(total)]
            added = relation_stats(conn, added_rows[name])
            stats[name] = [stats[name][k] - removed[k] + added[k] for k in (0, 1)]
            conn.execute(f"INSERT INTO {target_schema}.{name} BY NAME FROM {added_rows[name]}")
        for name in whole:
            conn.execute(f"CREATE OR REPLACE TABLE {target_schema}.{name} AS FROM {source_schema}.{name}")
            stats[name] = relation_stats(conn, f"{target_schema}.{name}")
        digest = write_build_info(conn, target_schema, build_info, stats)
    conn.execute(f"DROP SCHEMA IF EXISTS {source_schema} CASCADE")
    return digest


def next_load_seq(conn: duckdb.DuckDBPyConnection, schema: str = RAW_SCHEMA) -> int:
    """The number the next published load gets in ``load_log`` (1 on a new warehouse)."""
    if not table_exists(conn, schema, "load_log"):
        return 1
    _upgrade_load_log(conn, schema)
    return int(conn.execute(f"SELECT coalesce(max(load_seq), 0) + 1 FROM {schema}.load_log").fetchone()[0])


def append_load_log(
    conn: duckdb.DuckDBPyConnection, schema: str, select: str, params: list | None = None
) -> None:
    """Append the rows of ``select`` (columns by name, with ``params``) to ``schema.load_log``."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.load_log ({LOAD_LOG_DDL})")
    _upgrade_load_log(conn, schema)
    conn.execute(f"INSERT INTO {schema}.load_log BY NAME {select}", params)


def _upgrade_load_log(conn: duckdb.DuckDBPyConnection, schema: str) -> None:
    """A warehouse written before loads were numbered: add the columns (old loads and rows keep NULL,
    so the next dbt build is a whole one)."""
    for table in ("load_log", "ratings"):
        if table_exists(conn, schema, table):
            conn.execute(f"ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS load_seq BIGINT")
            conn.execute(f"ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS drop_date DATE")


def write_build_info(
    conn: duckdb.DuckDBPyConnection, schema: str, build_info: dict, stats: dict[str, list[int]]
) -> str:
    """Replace ``schema.build_info`` with one row: ``build_info``, the fingerprint of ``stats`` and the
    stats themselves (so an incremental publish can update the fingerprint from its delta alone)."""
    conn.execute(f"CREATE OR REPLACE TABLE {schema}.{BUILD_INFO_TABLE} ({BUILD_INFO_DDL})")
    digest = digest_of(stats)
    conn.execute(
        f"INSERT INTO {schema}.{BUILD_INFO_TABLE} VALUES (?, ?, ?, ?, ?)",
        [
            datetime.now(UTC).replace(tzinfo=None),
            json.dumps(build_info),
            digest,
            json.dumps(sorted(stats)),
            json.dumps({k: [v[0], str(v[1])] for k, v in stats.items()}),
        ],
    )
    return digest


def read_build_info(conn: duckdb.DuckDBPyConnection, schema: str = MARTS_SCHEMA) -> dict | None:
    """What the published marts were built from: ``{"published_at", "fingerprint", "tables", **info}``
    with ``info`` as :func:`publish_tables` got it (``dbt_vars``, ``run_id``); None before any publish."""
    if not table_exists(conn, schema, BUILD_INFO_TABLE):
        return None
    columns = {r[0] for r in conn.execute(f"DESCRIBE {schema}.{BUILD_INFO_TABLE}").fetchall()}
    stats = "table_stats" if "table_stats" in columns else "NULL"
    row = conn.execute(
        f"SELECT published_at, info, fingerprint, tables, {stats} FROM {schema}.{BUILD_INFO_TABLE}"
    ).fetchone()
    if row is None:
        return None
    return {
        **json.loads(row[1]),
        "published_at": row[0].isoformat(),
        "fingerprint": row[2],
        "tables": json.loads(row[3]),
        "table_stats": {k: [c, int(h)] for k, (c, h) in json.loads(row[4]).items()} if row[4] else None,
    }


def replace_raw_tables(conn: duckdb.DuckDBPyConnection, dataset: RawDataset, source: str) -> None:
    """Stage and publish a load in one go, with no audit in between (tests and notebooks seeding a
    warehouse; the pipeline audits between the two steps)."""
    schema = audit_schema(RAW_SCHEMA, "direct")
    stage_raw_tables(conn, dataset, source, schema)
    publish_tables(conn, schema, RAW_SCHEMA, list(RAW_DDL))


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
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
