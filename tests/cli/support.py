"""Shared helpers of the CLI and admin tests (imported as ``tests.cli.support``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runtara.database_url import DatabaseURL, parse_database_url
from tests.pg import postgres_marks

EPOCH_S = 1_700_000_000
"""2023-11-14T22:13:20Z: when seeded instances are made, unless a test says otherwise."""
DAY_S = 86_400
TABLES = ("instances", "checkpoints", "events", "signals", "custom_signals", "retry_attempts")
ENGINES = ["sqlite", pytest.param("postgresql", marks=postgres_marks())]
"""Every engine; PostgreSQL is skipped at collection without a server (``tests/pg.py``)."""


class Database:
    """A fresh database of one engine: its URL, and its rows read out of band."""

    def __init__(self, url: DatabaseURL, text: str, postgres: Any = None) -> None:
        self.url = url
        self.text = text
        self._postgres = postgres

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self._postgres is not None:
            return await self._postgres.execute(sql)
        assert self.url.sqlite_path is not None
        connection = sqlite3.connect(self.url.sqlite_path)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, each led by its instance id, sorted."""
        return {
            table: sorted(await self.rows(f"SELECT instance_id, {table}.* FROM {table}"), key=repr)
            for table in TABLES
        }

    async def tables(self) -> list[str]:
        if self._postgres is not None:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return [row[0] for row in await self.rows(sql)]

    async def instance_ids(self) -> set[str]:
        return {row[0] for row in await self.rows("SELECT instance_id FROM instances")}

    async def drop(self) -> None:
        if self._postgres is not None:
            await self._postgres.drop()


async def fresh_database(engine: str, tmp_path: Path) -> Database:
    """A fresh database of ``engine``, not migrated (SQLite: no file yet)."""
    if engine == "sqlite":
        text = f"sqlite://{tmp_path}/runtara.db"
        return Database(parse_database_url(text), text)
    from twisted.internet import reactor

    from tests.pg import create_database

    postgres = await create_database(reactor)
    return Database(parse_database_url(postgres.dsn), postgres.dsn, postgres)
