"""The small transaction API every transaction body is written against.

A *body* is an ``async def body(tx, *args)`` that runs inside one database
transaction and speaks only to ``tx``: it reads rows, writes rows and takes
``tx.now_ms`` as the operation's time. Bodies are written once
(``runtara.persistence.store``) and run by every engine:

- the SQLite engine runs a body to completion in one step in its pool
  thread, over a blocking cursor: its ``tx`` methods never suspend;
- the PostgreSQL engine runs a body on the reactor over txpostgres, where
  every ``await`` of a read is a round trip to the server.

SQL is written once too, with ``?`` placeholders; an engine rewrites them for
its driver. What differs between the databases' SQL is named by the engine's
``Dialect`` (row locks, one function name, the ledger lookup), so a body
never branches on which database it runs on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

Row = tuple[Any, ...]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Dialect:
    """What a database's SQL spells differently, as fragments bodies splice in."""

    name: str
    """The migrations directory, ``sql/<name>/``."""

    lock_row: str
    """Appended to a SELECT of rows that a decision depends on: holds them
    until the transaction ends (``" FOR UPDATE"``; empty where a write
    transaction already excludes every other writer)."""

    claim_rows: str
    """Appended to a SELECT of rows to take over: locks them and skips rows
    another transaction holds (``" FOR UPDATE SKIP LOCKED"``)."""

    byte_length: str
    """The SQL function giving the length of a blob in bytes."""

    big_integer: str
    """The column type of 64-bit integers (epoch milliseconds)."""

    ledger_exists: str
    """A query with one parameter (a table name) that returns a row when the
    table exists."""

    migration_lock: str | None
    """A statement that makes concurrent migrations wait for each other, run
    first in every migration transaction; None where the write transaction
    already does."""

    lift_timeouts: str | None
    """Statements that lift the engine's lock and statement timeouts for the
    rest of the transaction, run before ``migration_lock`` (a migration may
    wait for another server's, and may run long); None where there are none."""


SQLITE = Dialect(
    name="sqlite",
    # A write transaction (BEGIN IMMEDIATE) already excludes every other writer.
    lock_row="",
    claim_rows="",
    byte_length="length",
    big_integer="INTEGER",
    ledger_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    migration_lock=None,
    lift_timeouts=None,
)

POSTGRESQL = Dialect(
    name="postgresql",
    lock_row=" FOR UPDATE",
    claim_rows=" FOR UPDATE SKIP LOCKED",
    byte_length="octet_length",
    big_integer="BIGINT",
    ledger_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    # A transaction-scoped advisory lock; its key is "runtara" in ASCII.
    migration_lock="SELECT pg_advisory_xact_lock(32217264604410465)",
    lift_timeouts="SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0",
)


class Transaction(Protocol):
    """One open transaction, as a body sees it."""

    dialect: Dialect
    now_ms: int
    """The operation's time: epoch milliseconds, fixed for the transaction."""

    async def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; every row it returns (blobs as ``bytes``)."""

    async def row(self, sql: str, parameters: Sequence[Any] = ()) -> Row | None:
        """Run one statement; its first row, or None."""

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it changed."""

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        """Run one statement whose result the body does not need, in order.

        The engine may hold it back and send it together with the next
        statement or with the commit (one round trip instead of two), so a
        failure of a write may surface at a later statement or at the commit.
        """

    async def script(self, sql: str) -> None:
        """Run literal SQL of one or more statements, without parameters (migrations)."""


Body = Callable[..., Awaitable[_T]]
"""``async def body(tx: Transaction, *args) -> _T``."""
