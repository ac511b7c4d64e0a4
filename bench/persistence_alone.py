"""The persistence provider alone, in-process, without QUIC: where does a checkpoint's time go?

Decomposes ``checkpoint_throughput`` (analysis tool, not part of the matrix):

- ``--mode provider``: the engine's ``IPersistence.save_checkpoint`` (adbapi
  thread for SQLite, txpostgres pool for PostgreSQL) from N concurrent
  loops in one reactor; ``--reactor-busy-ms X`` keeps the reactor thread
  busy in X ms slices (every 0.5 ms) the way QUIC processing does in the
  server, to show what a busy reactor thread does to the database path.
- ``--mode sql-loop`` (SQLite): the provider's own transaction bodies run
  by a plain loop on one connection, no thread, no reactor.
- ``--mode pg-round-trips`` (PostgreSQL): psycopg2 threads run the
  checkpoint transaction as the provider sends it (BEGIN, 5 statements,
  COMMIT: 7 round trips) and as one call of a PL/pgSQL function doing the
  same work (1 round trip), with 1 and ``--pool-size`` connections: what
  fewer round trips per operation would buy.

    python -m bench.persistence_alone --engine sqlite --instances 64 --checkpoints 100
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench._common import ScratchDatabase, scratch_database, workdir


def provider_rate(db: ScratchDatabase, args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred, gatherResults

    from runtara.database_url import parse_database_url
    from runtara.persistence import open_persistence

    outcome: dict[str, Any] = {}

    async def main() -> None:
        url = parse_database_url(db.url)
        persistence = open_persistence(url, reactor, reactor, pool_size=args.pool_size)
        await persistence.start()
        await persistence.migrate()
        ids = [f"pa-{i}" for i in range(args.instances)]
        for instance_id in ids:
            await persistence.register_instance(instance_id, "bench", None)
        state = os.urandom(args.state_bytes)
        busy = None
        if args.reactor_busy_ms > 0:

            def spin() -> None:
                until = time.perf_counter() + args.reactor_busy_ms / 1000
                while time.perf_counter() < until:
                    pass

            busy = task.LoopingCall(spin)
            busy.start(0.0005)

        async def loop(instance_id: str) -> None:
            for k in range(args.checkpoints):
                await persistence.save_checkpoint(instance_id, "bench", f"cp-{k}", state)

        began, cpu = time.perf_counter(), time.process_time()
        await gatherResults([Deferred.fromCoroutine(loop(i)) for i in ids])
        elapsed = time.perf_counter() - began
        if busy is not None:
            busy.stop()
        outcome["checkpoints_per_s"] = len(ids) * args.checkpoints / elapsed
        outcome["process_cpu_pct"] = 100 * (time.process_time() - cpu) / elapsed
        await persistence.close()

    failures: list[Any] = []

    def stop(result: Any) -> None:
        if hasattr(result, "raiseException"):
            failures.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addBoth(stop))
    reactor.run()
    if failures:
        failures[0].raiseException()
    return outcome


def sql_loop_rate(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """SQLite: the store's transaction bodies in a plain loop (private functions)."""
    from runtara.persistence import store
    from runtara.persistence._group_commit import BlockingTransaction, run_to_completion
    from runtara.persistence.migrations import load_migrations
    from runtara.persistence.transaction import SQLITE

    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL").fetchall()
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")

    def transaction(body: Any, *body_args: Any) -> Any:
        db.execute("BEGIN IMMEDIATE")
        result = run_to_completion(body(BlockingTransaction(db, SQLITE, 1), *body_args))
        db.execute("COMMIT")
        return result

    migrations = load_migrations("sqlite")
    while transaction(store._apply_next_migration, migrations)[1] is not None:
        pass
    ids = [f"pa-{i}" for i in range(args.instances)]
    for instance_id in ids:
        transaction(store._register_instance, instance_id, "b", None)
    state = os.urandom(args.state_bytes)
    began = time.perf_counter()
    for k in range(args.checkpoints):
        for instance_id in ids:
            transaction(store._save_checkpoint, instance_id, "b", f"cp-{k}", state)
    elapsed = time.perf_counter() - began
    db.close()
    return {"checkpoints_per_s": len(ids) * args.checkpoints / elapsed}


_PG_FUNCTION = """
CREATE FUNCTION bench_checkpoint(p_id text, p_cp text, p_state bytea, p_now bigint)
RETURNS TABLE (found boolean, stored bytea, signal text) LANGUAGE plpgsql AS $$
DECLARE current_status text;
BEGIN
    SELECT status INTO current_status FROM instances WHERE instance_id = p_id FOR UPDATE;
    IF current_status IS DISTINCT FROM 'running' THEN
        RAISE EXCEPTION 'instance % is not running', p_id;
    END IF;
    INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at)
        VALUES (p_id, p_cp, p_state, p_now) ON CONFLICT DO NOTHING;
    IF FOUND THEN
        UPDATE instances SET checkpoint_id = p_cp WHERE instance_id = p_id;
        found := false; stored := ''::bytea;
    ELSE
        SELECT c.state INTO stored FROM checkpoints c
            WHERE c.instance_id = p_id AND c.checkpoint_id = p_cp;
        found := true;
    END IF;
    SELECT s.signal_type INTO signal FROM signals s
        WHERE s.instance_id = p_id AND s.acknowledged_at IS NULL;
    DELETE FROM custom_signals WHERE instance_id = p_id AND checkpoint_id = p_cp;
    RETURN NEXT;
END $$
"""


def _seven_round_trips(cursor: Any, instance_id: str, checkpoint_id: str, state: Any) -> None:
    cursor.execute("BEGIN")
    cursor.execute(
        "SELECT instance_id, tenant_id, status FROM instances WHERE instance_id = %s FOR UPDATE",
        (instance_id,),
    )
    cursor.fetchone()
    cursor.execute(
        "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at)"
        " VALUES (%s, %s, %s, 1) ON CONFLICT DO NOTHING RETURNING 1",
        (instance_id, checkpoint_id, state),
    )
    cursor.fetchone()
    cursor.execute(
        "UPDATE instances SET checkpoint_id = %s WHERE instance_id = %s",
        (checkpoint_id, instance_id),
    )
    cursor.execute(
        "SELECT signal_type, payload FROM signals"
        " WHERE instance_id = %s AND acknowledged_at IS NULL",
        (instance_id,),
    )
    cursor.fetchone()
    cursor.execute(
        "DELETE FROM custom_signals WHERE instance_id = %s AND checkpoint_id = %s"
        " RETURNING payload",
        (instance_id, checkpoint_id),
    )
    cursor.fetchone()
    cursor.execute("COMMIT")


def _one_round_trip(cursor: Any, instance_id: str, checkpoint_id: str, state: Any) -> None:
    cursor.execute(
        "SELECT * FROM bench_checkpoint(%s, %s, %s, 1)", (instance_id, checkpoint_id, state)
    )
    cursor.fetchone()


def _run_threads(
    body: Any, connections: list[Any], shares: list[list[str]], rounds: int, tag: str, state: Any
) -> float:
    """Run ``body`` for every (share, round) in one thread per connection; the seconds taken."""
    import threading

    def work(index: int) -> None:
        cursor = connections[index].cursor()
        for k in range(rounds):
            for instance_id in shares[index]:
                body(cursor, instance_id, f"{tag}-{k}", state)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(len(connections))]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def pg_round_trips(dsn: str, args: argparse.Namespace) -> None:
    import psycopg2

    from runtara.persistence.migrations import load_migrations

    setup = psycopg2.connect(dsn)
    setup.autocommit = True
    with setup.cursor() as cursor:
        for migration in load_migrations("postgresql"):
            cursor.execute(migration.sql)
        cursor.execute(_PG_FUNCTION)
        for i in range(args.instances):
            cursor.execute(
                "INSERT INTO instances (instance_id, tenant_id, status, created_at)"
                " VALUES (%s, 'bench', 'running', 1)",
                (f"pa-{i}",),
            )
    setup.close()
    ids = [f"pa-{i}" for i in range(args.instances)]
    state = psycopg2.Binary(os.urandom(args.state_bytes))
    for label, body in (("7 round trips", _seven_round_trips), ("1 round trip", _one_round_trip)):
        for threads in sorted({1, args.pool_size}):
            connections = [psycopg2.connect(dsn) for _ in range(threads)]
            for connection in connections:
                connection.autocommit = True
            shares = [ids[t::threads] for t in range(threads)]
            rounds = args.checkpoints if threads > 1 else max(1, args.checkpoints // 8)

            elapsed = _run_threads(body, connections, shares, rounds, f"{label[0]}{threads}", state)
            rate = len(ids) * rounds / elapsed
            for connection in connections:
                connection.close()
            print(
                f"postgresql checkpoint transaction, {label}, {threads} connection(s):"
                f" {rate:,.0f}/s"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--mode", choices=("provider", "sql-loop", "pg-round-trips"), default="provider"
    )
    parser.add_argument("--instances", type=int, default=64)
    parser.add_argument("--checkpoints", type=int, default=100)
    parser.add_argument("--state-bytes", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--reactor-busy-ms", type=float, default=0.0)
    parser.add_argument("--pg-url", default=None)
    args = parser.parse_args(argv)
    label = f"{args.engine} {args.mode} N={args.instances} reactor-busy={args.reactor_busy_ms}ms:"
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        if args.mode == "pg-round-trips":
            if db.pg_dsn is None:
                parser.error("--mode pg-round-trips is PostgreSQL only")
            pg_round_trips(db.pg_dsn, args)
        elif args.mode == "sql-loop":
            if db.sqlite_path is None:
                parser.error("--mode sql-loop is SQLite only")
            result = sql_loop_rate(db.sqlite_path, args)
            print(label, f"{result['checkpoints_per_s']:,.0f} checkpoints/s")
        else:
            result = provider_rate(db, args)
            print(
                label,
                f"{result['checkpoints_per_s']:,.0f} checkpoints/s,"
                f" process CPU {result['process_cpu_pct']:.0f}%",
            )


if __name__ == "__main__":
    main()
