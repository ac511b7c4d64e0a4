"""Test support for PostgreSQL: throwaway databases on the server under test.

The server comes from ``RUNTARA_TEST_POSTGRES_URL``, a ``postgresql://`` URL
whose database is used only for maintenance (CREATE/DROP DATABASE), e.g.
``postgresql://root@127.0.0.1:5432/postgres``. Without it the PostgreSQL
tests are skipped; with ``CI=true`` they fail instead, as they do when the
server cannot be reached there.

Every database this module creates is named
``runtara_test_<pid>_<random>_<n>``: the prefix is unique to the test session,
so parallel sessions never collide. Each one is dropped by its owner
(``PostgreSQLDatabase.drop``) and, as a safety net, all of the session's
databases are dropped when the interpreter exits. Databases that an aborted
session left behind are dropped by the next session once they are a day old
(their creation time is kept in the database comment).

Entry points:

- ``postgresql_database(directory, reactor)``: the engine factory of the
  persistence suites' registry (``tests/persistence/conftest.py``);
- ``make_postgresql_persistence(clock)``: a started and migrated provider on
  a fresh database;
- ``PostgreSQLDatabase``: one fresh database (``FreshDatabase``) with its DSN,
  providers on it, and out-of-band SQL.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
from twisted.internet.defer import Deferred

from runtara.persistence.migrations import LEDGER_TABLE

_T = TypeVar("_T")

URL_VARIABLE = "RUNTARA_TEST_POSTGRES_URL"
SKIP_REASON = (
    "PostgreSQL tests need RUNTARA_TEST_POSTGRES_URL, "
    "e.g. postgresql://root@127.0.0.1:5432/postgres"
)
DATABASE_PREFIX = "runtara_test_"
SESSION_PREFIX = f"{DATABASE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
"""Unique to this test session: every database it creates starts with it."""

STALE_AFTER_S = 24 * 3600
_COMMENT_MARK = "runtara test database created_at="

_names = itertools.count(1)
_checked = False
_problem: str | None = None
_created: set[str] = set()


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where missing PostgreSQL is an error."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def server_url_or_none() -> str | None:
    """``RUNTARA_TEST_POSTGRES_URL``, or None when it is not set."""
    return os.environ.get(URL_VARIABLE, "").strip() or None


def database_url(url: str, database: str) -> str:
    """``url`` pointing at ``database`` instead of its own database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def masked(url: str) -> str:
    """``url`` without its password or query, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def server_problem() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can.

    Checked once per session with a blocking connection (at collection time,
    when the reactor is not running yet), which also drops stale databases.
    """
    global _checked, _problem
    if not _checked:
        _checked = True
        _problem = _check_server()
    return _problem


def _check_server() -> str | None:
    url = server_url_or_none()
    if url is None:
        return SKIP_REASON
    try:
        connection = psycopg2.connect(url, connect_timeout=5, application_name="runtara-tests")
    except psycopg2.Error as error:
        lines = str(error).strip().splitlines()
        return f"PostgreSQL at {masked(url)} is unreachable: {lines[0] if lines else error}"
    try:
        connection.autocommit = True
        _drop_stale_databases(connection)
    finally:
        connection.close()
    return None


def _drop_stale_databases(connection: Any) -> None:
    """Drop test databases of earlier sessions that are older than a day."""
    cutoff = time.time() - STALE_AFTER_S
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE starts_with(datname, %s)",
            (DATABASE_PREFIX,),
        )
        for name, comment in cursor.fetchall():
            if _created_at(comment) < cutoff:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _created_at(comment: str | None) -> float:
    if not comment or not comment.startswith(_COMMENT_MARK):
        return float("inf")
    try:
        return float(comment[len(_COMMENT_MARK) :])
    except ValueError:
        return float("inf")


def unavailable(reason: str) -> None:
    """Skip the test, or fail it loudly under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


def require_server() -> str:
    """The server URL; skips the test (fails it under CI) when there is no usable server."""
    problem = server_problem()
    if problem is not None:
        unavailable(problem)
    url = server_url_or_none()
    assert url is not None
    return url


def postgres_marks() -> list[pytest.MarkDecorator]:
    """Marks for tests parametrized over PostgreSQL: ``postgres``, plus a skip when
    there is no usable server (never under CI, where the tests then fail).

    Skipping must happen here, at collection: a skip raised inside a
    pytest-twisted async fixture breaks the fixtures of the tests after it.
    """
    marks = [pytest.mark.postgres]
    problem = server_problem()
    if problem is not None and not in_ci():
        marks.append(pytest.mark.skip(reason=problem))
    return marks


# -- connections ---------------------------------------------------------------------


async def connect(dsn: str, reactor: Any) -> Any:
    """A connected ``txpostgres.Connection`` (autocommit) to ``dsn``."""
    from txpostgres import txpostgres

    connection = txpostgres.Connection(reactor)
    await connection.connect(dsn, application_name="runtara-tests")
    return connection


async def with_connection(dsn: str, reactor: Any, use: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run ``use(connection)`` on a connection of its own, closed afterwards."""
    connection = await connect(dsn, reactor)
    try:
        return await use(connection)
    finally:
        connection.close()


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    if cursor.description is None:
        return []
    return [
        tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)
        for row in cursor.fetchall()
    ]


async def run_sql(connection: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run literal SQL in one transaction on ``connection``; the rows of its last statement."""

    async def body(cursor: Any) -> list[tuple[Any, ...]]:
        await cursor.execute(sql)
        return _rows(cursor)

    result: list[tuple[Any, ...]] = await connection.runInteraction(
        lambda cursor: Deferred.fromCoroutine(body(cursor))
    )
    return result


# -- databases -------------------------------------------------------------------------


class PostgreSQLDatabase:
    """A fresh, empty database of the test session (a ``FreshDatabase``)."""

    dialect = "postgresql"

    def __init__(self, server: str, name: str, reactor: Any) -> None:
        self.server = server
        self.name = name
        self.dsn = database_url(server, name)
        self._reactor = reactor

    def provider(self, clock: Any, *, pool_size: int = 4) -> Any:
        """A new ``PostgreSQLPersistence`` (not started) on this database."""
        from runtara.persistence.postgresql import PostgreSQLPersistence

        return PostgreSQLPersistence(self.dsn, clock, pool_size=pool_size, reactor=self._reactor)

    async def execute(self, sql: str) -> list[tuple[Any, ...]]:
        return await with_connection(self.dsn, self._reactor, lambda c: run_sql(c, sql))

    async def execute_script(self, sql: str) -> None:
        await with_connection(self.dsn, self._reactor, lambda c: run_sql(c, sql))

    async def schema(self) -> list[tuple[Any, ...]]:
        """Columns, constraints, indexes and sequences of ``public``, except the ledger."""
        return await self.execute(
            "SELECT 'column', table_name::text, column_name::text,"
            " concat_ws(' ', data_type, is_nullable, column_default)"
            " FROM information_schema.columns"
            f" WHERE table_schema = 'public' AND table_name <> '{LEDGER_TABLE}'"
            " UNION ALL"
            " SELECT 'constraint', conrelid::regclass::text, conname::text,"
            " pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            f" AND conrelid::regclass::text <> '{LEDGER_TABLE}'"
            " UNION ALL"
            " SELECT 'index', tablename::text, indexname::text, indexdef FROM pg_indexes"
            f" WHERE schemaname = 'public' AND tablename <> '{LEDGER_TABLE}'"
            " UNION ALL"
            " SELECT 'sequence', '', sequencename::text, data_type::text FROM pg_sequences"
            " WHERE schemaname = 'public'"
            " ORDER BY 1, 2, 3"
        )

    async def drop(self) -> None:
        await with_connection(self.server, self._reactor, self._drop)
        _created.discard(self.name)

    async def _drop(self, connection: Any) -> None:
        await connection.runOperation(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


async def create_database(reactor: Any) -> PostgreSQLDatabase:
    """Create a fresh, empty database named after the session (skips without a server)."""
    server = require_server()
    name = f"{SESSION_PREFIX}_{next(_names)}"

    async def create(connection: Any) -> None:
        await connection.runOperation(f'CREATE DATABASE "{name}"')
        await connection.runOperation(
            f"COMMENT ON DATABASE \"{name}\" IS '{_COMMENT_MARK}{time.time():.0f}'"
        )

    await with_connection(server, reactor, create)
    _created.add(name)
    return PostgreSQLDatabase(server, name, reactor)


async def postgresql_database(directory: Path, reactor: Any) -> PostgreSQLDatabase:
    """The ``ENGINES`` factory: a fresh database (``directory`` is not needed)."""
    return await create_database(reactor)


async def make_postgresql_persistence(clock: Any, *, reactor: Any = None) -> Any:
    """A started and migrated ``PostgreSQLPersistence`` on a fresh database.

    The caller closes the provider; the database goes when the session ends.
    """
    if reactor is None:
        from twisted.internet import reactor
    database = await create_database(reactor)
    provider = database.provider(clock)
    await provider.start()
    await provider.migrate()
    return provider


@atexit.register
def _drop_session_databases() -> None:
    """Drop this session's databases that are still there (blocking, at exit).

    Best effort: a server that is gone by now leaves them to the stale sweep.
    """
    url = server_url_or_none()
    if not _created or url is None:
        return
    try:
        connection = psycopg2.connect(url, connect_timeout=5)
    except psycopg2.Error:
        return
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in sorted(_created):
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()
