"""Values shared by the persistence suites and their fixtures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from runtara.interfaces import IPersistence

EPOCH_S = 1_700_000_000
"""Where every test's clock starts (2023-11-14T22:13:20Z)."""

EPOCH_MS = EPOCH_S * 1000


class FreshDatabase(Protocol):
    """An empty database of one engine, created for one test.

    ``execute`` and ``execute_script`` run literal SQL out of band (on a
    connection of their own, committed at once), so tests can observe rows no
    interface method shows, or damage the database on purpose. Tests keep
    that SQL portable: no placeholders, nothing engine-specific.
    """

    dialect: str

    def provider(self, clock: Any) -> IPersistence:
        """A new provider (not started) on this database, using ``clock``."""

    async def execute(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    async def execute_script(self, sql: str) -> None:
        """Run several statements (a migration file, say)."""

    async def schema(self) -> list[tuple[Any, ...]]:
        """Every schema object except the migration ledger, in a stable order."""

    async def drop(self) -> None:
        """Remove the database."""


MakeDatabase = Callable[[], Awaitable[FreshDatabase]]
"""The ``make_database`` fixture: creates one more fresh database of the engine."""
