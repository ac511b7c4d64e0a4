"""The database's own limit: the same rows written by the plainest possible loop.

- SQLite: one ``sqlite3`` connection in autocommit mode (every INSERT is its
  own transaction) with the server's settings, ``journal_mode=WAL`` and
  ``synchronous=FULL``, on a file next to the server's database (same disk).
  SQLite has one writer at a time, so one loop is its limit.
- PostgreSQL: ``threads`` threads, each with its own psycopg2 connection in
  autocommit mode (default durability: ``synchronous_commit`` as the server
  has it), inserting single rows; the same pool size the server uses.

Rows go into a table shaped like ``checkpoints`` (same columns, same
primary key, no foreign key) and are written in the order the engine gets
them: checkpoint k of every instance before checkpoint k+1.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import latency_summary

_SQLITE_TABLE = (
    "CREATE TABLE limit_checkpoints ("
    " instance_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL, state BLOB NOT NULL,"
    " created_at INTEGER NOT NULL, PRIMARY KEY (instance_id, checkpoint_id))"
)
_PG_TABLE = (
    "CREATE TABLE limit_checkpoints ("
    " instance_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL, state BYTEA NOT NULL,"
    " created_at BIGINT NOT NULL, PRIMARY KEY (instance_id, checkpoint_id))"
)


def rows_for(instance_ids: list[str], checkpoints: int) -> list[tuple[str, str]]:
    """(instance, checkpoint) keys in engine order: cp-0 of everyone, then cp-1, ..."""
    return [(iid, f"cp-{k}") for k in range(checkpoints) for iid in instance_ids]


def sqlite_limit(path: Path, keys: list[tuple[str, str]], state: bytes) -> dict[str, Any]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode = WAL").fetchall()
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute(_SQLITE_TABLE)
        latencies = []
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        for instance_id, checkpoint_id in keys:
            begin = time.perf_counter()
            connection.execute(
                "INSERT INTO limit_checkpoints (instance_id, checkpoint_id, state, created_at)"
                " VALUES (?, ?, ?, ?)",
                (instance_id, checkpoint_id, state, now_ms),
            )
            latencies.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        written = connection.execute("SELECT COUNT(*) FROM limit_checkpoints").fetchone()[0]
    finally:
        connection.close()
    return _report(written, elapsed, latencies, connections=1)


def postgres_limit(
    dsn: str, keys: list[tuple[str, str]], state: bytes, threads: int
) -> dict[str, Any]:
    import psycopg2

    setup = psycopg2.connect(dsn)
    setup.autocommit = True
    with setup.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS limit_checkpoints")
        cursor.execute(_PG_TABLE)
    threads = max(1, min(threads, len(keys)))
    shares = [keys[index::threads] for index in range(threads)]
    connections = []
    for _ in range(threads):
        connection = psycopg2.connect(dsn)
        connection.autocommit = True
        connections.append(connection)
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    windows: list[tuple[float, float]] = [(0.0, 0.0)] * threads
    errors: list[BaseException] = []
    payload = psycopg2.Binary(state)
    now_ms = int(time.time() * 1000)

    def loop(index: int) -> None:
        try:
            cursor = connections[index].cursor()
            own = latencies[index]
            barrier.wait()
            started = time.perf_counter()
            for instance_id, checkpoint_id in shares[index]:
                begin = time.perf_counter()
                cursor.execute(
                    "INSERT INTO limit_checkpoints (instance_id, checkpoint_id, state, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (instance_id, checkpoint_id, payload, now_ms),
                )
                own.append(time.perf_counter() - begin)
            windows[index] = (started, time.perf_counter())
        except BaseException as error:  # reported below
            errors.append(error)
            barrier.abort()

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    for worker in workers:
        worker.join()
    for connection in connections:
        connection.close()
    if errors:
        raise errors[0]
    elapsed = max(end for _, end in windows) - min(start for start, _ in windows)
    with setup.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM limit_checkpoints")
        written = cursor.fetchone()[0]
        cursor.execute("DROP TABLE limit_checkpoints")
    setup.close()
    return _report(written, elapsed, [x for own in latencies for x in own], connections=threads)


def _report(
    written: int, elapsed: float, latencies: list[float], connections: int
) -> dict[str, Any]:
    summary = latency_summary(latencies, "limit_latency")
    return {
        "limit_rows": written,
        "limit_connections": connections,
        "limit_seconds": elapsed,
        "limit_rows_per_s": written / max(elapsed, 1e-9),
        "limit_latency_p50_ms": summary.get("limit_latency_p50_ms"),
        "limit_latency_p99_ms": summary.get("limit_latency_p99_ms"),
    }


def measure_limit(database: Any, keys: list[tuple[str, str]], state: bytes, pool: int) -> dict:
    """The limit on ``database`` (a ``ScratchDatabase``) for these rows."""
    if database.engine == "sqlite":
        return sqlite_limit(database.sqlite_path.with_name("limit.db"), keys, state)
    return postgres_limit(database.pg_dsn, keys, state, pool)
