"""Fixtures for the persistence suites, one registry entry per database engine.

``ENGINES`` maps an engine name to an async factory that creates a fresh,
empty database of that engine and returns it as a ``FreshDatabase``. Every
engine-agnostic fixture is parametrized over the registry, so adding an
engine means adding one factory (which may call ``pytest.skip`` when its
server is not configured).

Fixtures:

- ``clock``: a ``task.Clock`` at a realistic epoch (``EPOCH_S``);
- ``database``: a fresh database of the engine under test;
- ``make_database``: creates further fresh databases of the same engine;
- ``persistence``: a started and migrated provider on ``database``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from runtara.interfaces import IPersistence
from tests.persistence.support import EPOCH_S, FreshDatabase
from tests.pg import postgres_marks, postgresql_database


class SQLiteDatabase:
    """A fresh SQLite file under the test's temporary directory."""

    dialect = "sqlite"

    def __init__(self, path: Path, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor

    def provider(self, clock: Any) -> IPersistence:
        from runtara.persistence.sqlite import SQLitePersistence

        return SQLitePersistence(str(self.path), clock, reactor=self._reactor)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=5)

    async def execute(self, sql: str) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    async def execute_script(self, sql: str) -> None:
        connection = self._connect()
        try:
            connection.executescript(sql)
        finally:
            connection.close()

    async def schema(self) -> list[tuple[Any, ...]]:
        from runtara.persistence.migrations import LEDGER_TABLE

        return await self.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            f" WHERE tbl_name <> '{LEDGER_TABLE}' ORDER BY type, name"
        )

    async def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


async def _sqlite_database(directory: Path, reactor: Any) -> FreshDatabase:
    directory.mkdir(parents=True, exist_ok=True)
    return SQLiteDatabase(directory / "runtara.db", reactor)


EngineFactory = Callable[[Path, Any], Awaitable[FreshDatabase]]

ENGINES: dict[str, EngineFactory] = {
    "sqlite": _sqlite_database,
    "postgresql": postgresql_database,
}
"""Engine name -> async factory ``(scratch directory, reactor) -> FreshDatabase``."""


class DatabaseMaker:
    """Creates fresh databases of one engine and drops them all at the end."""

    def __init__(self, engine: str, scratch: Path, reactor: Any) -> None:
        self.engine = engine
        self._scratch = scratch
        self._reactor = reactor
        self._created: list[FreshDatabase] = []

    async def __call__(self) -> FreshDatabase:
        directory = self._scratch / f"db{len(self._created)}"
        database = await ENGINES[self.engine](directory, self._reactor)
        self._created.append(database)
        return database

    async def drop_all(self) -> None:
        for database in self._created:
            await database.drop()


@pytest.fixture
def clock() -> task.Clock:
    """A clock at ``EPOCH_S``; tests advance it by whole seconds."""
    clock = task.Clock()
    clock.advance(EPOCH_S)
    return clock


ENGINE_MARKS = {"postgresql": postgres_marks()}
"""Marks per engine (PostgreSQL: ``postgres``, skipped at collection without a server)."""


@pytest_twisted.async_yield_fixture(
    params=[pytest.param(engine, marks=ENGINE_MARKS.get(engine, ())) for engine in ENGINES]
)
async def make_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DatabaseMaker]:
    from twisted.internet import reactor

    maker = DatabaseMaker(request.param, tmp_path, reactor)
    yield maker
    await maker.drop_all()


@pytest_twisted.async_fixture
async def database(make_database: DatabaseMaker) -> FreshDatabase:
    return await make_database()


@pytest_twisted.async_yield_fixture
async def persistence(database: FreshDatabase, clock: task.Clock) -> AsyncIterator[IPersistence]:
    provider = database.provider(clock)
    await provider.start()
    await provider.migrate()
    yield provider
    await provider.close()
