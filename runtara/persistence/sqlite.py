"""The SQLite engine: one database file, one connection, transactions in groups.

Built on ``twisted.enterprise.adbapi`` with a pool of exactly one connection.
SQLite admits one writer at a time, so this process runs its transactions
one after another in the pool's thread (concurrent first checkpoints are
serial by construction); other processes on the same file, such as the
``runtara`` CLI, wait up to the busy timeout for the write lock. How the
transactions run (group commit, bodies run to completion in the pool
thread) is ``runtara.persistence._group_commit``; what they do is
``runtara.persistence.store``.

The connection is opened with ``isolation_level=None`` so that the
``sqlite3`` module never opens or commits a transaction on its own.

What is SQLite's own lives here: the dialect, the per-connection pragmas and
which SQLite errors are retryable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from runtara.errors import DatabaseError
from runtara.interfaces import IDatabaseEngine
from runtara.persistence._group_commit import READ, WRITE, GroupCommitter, Operation
from runtara.persistence.store import Store
from runtara.persistence.transaction import SQLITE as DIALECT
from runtara.persistence.transaction import Body, Transaction

MAX_BATCH = 256
"""The most operations one group-commit transaction holds."""

if TYPE_CHECKING:
    from runtara.metrics import Metrics

_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
DEFAULT_BUSY_TIMEOUT_MS = 5000

# SQLite primary result code -> (details safe to show, retryable).
_ERROR_CATEGORIES: dict[int, tuple[str, bool]] = {
    sqlite3.SQLITE_BUSY: ("database is locked", True),
    sqlite3.SQLITE_LOCKED: ("database table is locked", True),
    sqlite3.SQLITE_IOERR: ("disk I/O error", True),
    sqlite3.SQLITE_FULL: ("database or disk is full", True),
    sqlite3.SQLITE_CANTOPEN: ("unable to open database file", True),
    sqlite3.SQLITE_PROTOCOL: ("locking protocol error", True),
    sqlite3.SQLITE_SCHEMA: ("database schema changed", True),
    sqlite3.SQLITE_READONLY: ("database is read-only", False),
    sqlite3.SQLITE_CORRUPT: ("database file is corrupt", False),
    sqlite3.SQLITE_NOTADB: ("file is not a database", False),
    sqlite3.SQLITE_CONSTRAINT: ("constraint violated", False),
    sqlite3.SQLITE_TOOBIG: ("value too big", False),
    sqlite3.SQLITE_MISMATCH: ("datatype mismatch", False),
}


def _database_error(operation: str, error: sqlite3.Error) -> DatabaseError:
    """``error`` as a ``DatabaseError`` whose details hold no SQL text or data.

    The details are a short category chosen from SQLite's result code, or the
    exception's class name when the code is not one we know.
    """
    code = getattr(error, "sqlite_errorcode", None)
    category = None if code is None else _ERROR_CATEGORIES.get(code & 0xFF)
    if category is not None:
        details, retryable = category
        return DatabaseError(operation, details, retryable)
    name = getattr(error, "sqlite_errorname", None)
    details = type(error).__name__ if name is None else f"{type(error).__name__} ({name})"
    return DatabaseError(operation, details, retryable=False)


@implementer(IDatabaseEngine)
class SQLiteEngine:
    """Transactions on one SQLite file, through one adbapi pool connection.

    ``reactor`` runs the pool's thread. ``synchronous`` is SQLite's
    durability setting for this connection (``FULL`` by default: a committed
    operation survives a power loss); ``busy_timeout_ms`` is how long a write
    waits for another process's lock.
    """

    _log = Logger()
    dialect = DIALECT

    def __init__(
        self,
        path: str,
        *,
        reactor: IReactorCore,
        synchronous: str = "FULL",
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if synchronous.upper() not in _SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int):
            raise ValueError(f"busy_timeout_ms must be an int, got {busy_timeout_ms!r}")
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms}")
        self.path = path
        self.description = f"SQLite database {path}"
        self._reactor = reactor
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._on_batch = on_batch
        self._committer: GroupCommitter | None = None

    def start(self) -> Deferred[None]:
        """Open the pool; its connection opens (with the pragmas) at the first transaction."""
        if self._committer is None or self._committer.closing:
            pool = ConnectionPool(
                "sqlite3",
                self.path,
                check_same_thread=False,
                isolation_level=None,
                cp_min=1,
                cp_max=1,
                cp_openfun=self.configure_connection,
                cp_reactor=self._reactor,
            )
            pool.start()
            self._committer = GroupCommitter(
                pool, DIALECT, self._committer_closed, MAX_BATCH, self._on_batch
            )
            self._log.info(
                "opened SQLite database {path} (synchronous={synchronous})",
                path=self.path,
                synchronous=self._synchronous,
            )
        return succeed(None)

    def configure_connection(self, connection: sqlite3.Connection) -> None:
        """Per-connection settings; adbapi calls this on every new connection."""
        try:
            connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            connection.execute("PRAGMA journal_mode = WAL").fetchall()
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise

    def close(self) -> Deferred[None]:
        """Close the pool (idempotent) once the queued transactions were answered."""
        if self._committer is None:
            return succeed(None)
        return self._committer.close()

    def _committer_closed(self, committer: GroupCommitter) -> None:
        if self._committer is committer:
            self._committer = None
        self._log.info("closed SQLite database {path}", path=self.path)

    def transact(
        self, operation: str, writes: bool, body: Body[Any], args: tuple[Any, ...], now_ms: int
    ) -> Deferred[Any]:
        committer = self._committer
        if committer is None or committer.closing:
            return fail(DatabaseError(operation, "database is not open", retryable=False))
        ran = committer.submit(Operation(WRITE if writes else READ, body, args, now_ms))
        ran.addErrback(self._translate_failure, operation)
        return ran

    def _translate_failure(self, failure: Failure, operation: str) -> Failure:
        """Turn a driver failure into ``DatabaseError``; domain errors pass unchanged."""
        if not failure.check(sqlite3.Error):
            return failure
        error = _database_error(operation, failure.value)
        if error.retryable:
            self._log.warn(
                "database error during {operation}: {details} (retryable)",
                operation=operation,
                details=error.details,
            )
        else:
            self._log.failure(
                "database error during {operation}: {details}",
                failure=failure,
                operation=operation,
                details=error.details,
            )
        return Failure(error)


class SQLitePersistence(Store):
    """The ``Store`` on one SQLite file (see ``SQLiteEngine`` for the options)."""

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        reactor: IReactorCore,
        synchronous: str = "FULL",
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        metrics: Metrics | None = None,
    ) -> None:
        engine = SQLiteEngine(
            path,
            reactor=reactor,
            synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
            on_batch=None if metrics is None else metrics.observe_batch,
        )
        super().__init__(engine, clock, metrics)
        self.path = path

    def connection_settings(self) -> Deferred[dict[str, object]]:
        """Fire with the pragmas in force on the pool's connection (diagnostics)."""
        return self._read("connection_settings", _connection_settings)


async def _connection_settings(tx: Transaction) -> dict[str, object]:
    settings: dict[str, object] = {}
    for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
        row = await tx.row(f"PRAGMA {pragma}")
        assert row is not None
        settings[pragma] = row[0]
    return settings
