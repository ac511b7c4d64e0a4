"""The PostgreSQL engine: transactions on a txpostgres pool, no threads.

Every transaction body (``runtara.persistence.store``) runs on one pooled
connection inside one transaction (READ COMMITTED), over a cursor whose
``execute()`` returns a Deferred: the body awaits its reads, while ``BEGIN``,
its writes and ``COMMIT`` travel with the next statement it sends
(``_PipelinedTransaction``), so a typical operation costs two round trips.
The transaction commits when the body returns and rolls back when it
raises. Domain errors raised by a body roll the transaction back and
reach the caller unchanged; every driver failure becomes ``DatabaseError``
whose details are a short category, never SQL text, parameters or the
connection string.

The pool, its reconnection and the classification of driver errors are
``runtara.persistence._pgpool``. What is PostgreSQL's own lives in these two
modules: ``%s`` placeholders, which SQLSTATEs are retryable, and the
per-connection settings; its SQL dialect is ``transaction.POSTGRESQL``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres.txpostgres import RollbackFailed
from zope.interface import implementer

from runtara.config import DEFAULT_DB_LOCK_TIMEOUT_MS, DEFAULT_DB_STATEMENT_TIMEOUT_MS
from runtara.errors import DatabaseError
from runtara.interfaces import IDatabaseEngine
from runtara.persistence._pgpool import (
    DRIVER_FAILURES,
    GuardedPool,
    connect_failure,
    database_error,
)
from runtara.persistence.store import Store
from runtara.persistence.transaction import POSTGRESQL as DIALECT
from runtara.persistence.transaction import Body, Row

if TYPE_CHECKING:
    from runtara.metrics import Metrics

_log = Logger(namespace="runtara.persistence.postgresql")

DEFAULT_CONNECT_TIMEOUT_S = 10.0
"""How long ``start()`` waits for the pool's connections unless the DSN sets
``connect_timeout`` (libpq ignores it for the non-blocking connections used here)."""

APPLICATION_NAME = "runtara"
"""The ``application_name`` of the pool's sessions unless the DSN names one."""


@lru_cache(maxsize=1024)
def _driver_sql(sql: str) -> str:
    """``sql`` with psycopg2's placeholders (``%s``) for the store's (``?``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PipelinedTransaction:
    """The transaction API over a txpostgres cursor, in as few round trips as it can.

    Statements whose result the body needs (``rows``, ``row``, ``execute``)
    are round trips; ``BEGIN`` and every ``write`` wait and travel with the
    next of them, and the last writes travel with ``COMMIT``: one
    multi-statement query, whose result is its last statement's. A body that
    locks a row, reads, then writes therefore costs two round trips. A
    read-only body runs without ``BEGIN``/``COMMIT``: under READ COMMITTED
    each of its statements sees its own snapshot either way.
    """

    dialect = DIALECT

    def __init__(self, cursor: Any, now_ms: int, transactional: bool) -> None:
        self._cursor = cursor
        self.now_ms = now_ms
        self._transactional = transactional
        self._began = False
        self._held: list[str] = ["BEGIN"] if transactional else []
        self._held_parameters: list[Any] = []

    async def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; its rows, with every bytea value as ``bytes``."""
        await self._send(sql, parameters)
        return [_plain(row) for row in self._cursor.fetchall()]

    async def row(self, sql: str, parameters: Sequence[Any] = ()) -> Row | None:
        rows = await self.rows(sql, parameters)
        return rows[0] if rows else None

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        await self._send(sql, parameters)
        return int(self._cursor.rowcount)

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        self._held.append(_driver_sql(sql))
        self._held_parameters.extend(parameters)

    async def script(self, sql: str) -> None:
        # Literal SQL may hold "%": it travels alone, unformatted.
        if self._held:
            await self._send_held()
        await self._cursor.execute(sql)

    async def commit(self) -> None:
        """Send what is held, then ``COMMIT`` (a read-only body: what is held, if anything)."""
        if self._transactional:
            self.write("COMMIT")
        if self._held:
            await self._send_held()

    async def roll_back(self) -> None:
        """``ROLLBACK`` if ``BEGIN`` went out; what is held is dropped."""
        self._held.clear()
        self._held_parameters.clear()
        if self._began:
            await self._cursor.execute("ROLLBACK")

    async def _send(self, sql: str, parameters: Sequence[Any]) -> None:
        self.write(sql, parameters)
        await self._send_held()

    async def _send_held(self) -> None:
        statements, parameters = self._held, self._held_parameters
        self._held, self._held_parameters = [], []
        self._began = self._began or statements[0] == "BEGIN"
        await self._cursor.execute("; ".join(statements), parameters)


def _plain(row: Sequence[Any]) -> Row:
    return tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)


async def _run_body(
    cursor: Any, body: Body[Any], args: tuple[Any, ...], now_ms: int, writes: bool
) -> Any:
    """``body(tx, *args)`` in one transaction on ``cursor``: committed, or rolled back.

    A failed rollback raises ``RollbackFailed`` (the connection may be left
    inside the transaction; the pool's guard then replaces it).
    """
    transaction = _PipelinedTransaction(cursor, now_ms, transactional=writes)
    try:
        result = await body(transaction, *args)
        await transaction.commit()
    except BaseException as error:
        try:
            await transaction.roll_back()
        except Exception:
            _log.failure("rolling back a failed transaction failed")
            raise RollbackFailed(None, Failure(error)) from error
        raise
    return result


def _describe_target(parameters: dict[str, str] | None) -> str:
    """Where the DSN points, without its password."""
    if parameters is None:
        return "PostgreSQL (unreadable connection string)"
    host = parameters.get("host") or "the local socket"
    port = parameters.get("port") or "5432"
    where = f"PostgreSQL at {host}:{port}"
    details = [
        f"{label} '{parameters[key]}'"
        for key, label in (("dbname", "database"), ("user", "user"))
        if parameters.get(key)
    ]
    return f"{where} ({', '.join(details)})" if details else where


def _parse_dsn(dsn: str) -> dict[str, str] | None:
    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except psycopg2.Error:
        return None


@implementer(IDatabaseEngine)
class PostgreSQLEngine:
    """Transactions on one PostgreSQL database through a txpostgres pool.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL (it may hold
    a password: it is never logged nor shown in errors). ``reactor`` runs the
    connections and their reconnection timers. ``pool_size`` connections are
    opened by ``start``.

    Every session of the pool runs with ``lock_timeout`` and
    ``statement_timeout`` (milliseconds, 0 for none): a statement that waits
    longer for a lock, or runs longer, fails with a retryable
    ``DatabaseError`` instead of holding its caller forever. Migrations lift
    both for their own transaction (``Dialect.lift_timeouts``).
    """

    dialect = DIALECT

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        reactor: Any,
        lock_timeout_ms: int = DEFAULT_DB_LOCK_TIMEOUT_MS,
        statement_timeout_ms: int = DEFAULT_DB_STATEMENT_TIMEOUT_MS,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        for name, value in (
            ("lock_timeout_ms", lock_timeout_ms),
            ("statement_timeout_ms", statement_timeout_ms),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self._dsn = dsn
        self._reactor = reactor
        self._pool_size = pool_size
        self._timeouts = {
            "lock_timeout": lock_timeout_ms,
            "statement_timeout": statement_timeout_ms,
        }
        self._parameters = _parse_dsn(dsn)
        self.description = _describe_target(self._parameters)
        self.pool: GuardedPool | None = None

    def start(self) -> Deferred[None]:
        """Open the pool. Fails with a ``DatabaseError`` naming the server, never the password."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self.pool is not None:
            return
        if self._parameters is None:
            raise DatabaseError(
                "start", f"cannot connect to {self.description}: invalid connection string", False
            )
        timeout_s = float(self._parameters.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT_S)
        connect_kwargs = {"options": self._session_options()}
        if "application_name" not in self._parameters:
            connect_kwargs["application_name"] = APPLICATION_NAME
        pool = GuardedPool(self._dsn, self._pool_size, self._reactor, connect_kwargs)
        try:
            await pool.open(timeout_s)
        except Exception as error:
            details, retryable = connect_failure(error, timeout_s)
            raise DatabaseError(
                "start", f"cannot connect to {self.description}: {details}", retryable
            ) from None
        self.pool = pool
        _log.info(
            "connected to {target} with {size} connections",
            target=self.description,
            size=self._pool_size,
        )

    def _session_options(self) -> str:
        """libpq ``options`` for every session: the DSN's own, then the timeouts."""
        assert self._parameters is not None
        settings = [f"-c {name}={value}" for name, value in self._timeouts.items()]
        return " ".join([self._parameters.get("options", ""), *settings]).strip()

    def close(self) -> Deferred[None]:
        """Close every connection and stop reconnecting (idempotent). Fires with None."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
            _log.info("closed the connections to {target}", target=self.description)
        return succeed(None)

    def transact(
        self, operation: str, writes: bool, body: Body[Any], args: tuple[Any, ...], now_ms: int
    ) -> Deferred[Any]:
        pool = self.pool
        if pool is None:
            return fail(DatabaseError(operation, "database is not open", retryable=False))
        ran: Deferred[Any] = pool.run_with_cursor(
            lambda cursor: Deferred.fromCoroutine(_run_body(cursor, body, args, now_ms, writes))
        )
        ran.addErrback(self._translate_failure, operation)
        return ran

    def _translate_failure(self, failure: Failure, operation: str) -> Failure:
        """Turn a driver failure into ``DatabaseError``; domain errors pass unchanged."""
        if not failure.check(*DRIVER_FAILURES):
            return failure
        error = database_error(operation, failure.value)
        sqlstate = getattr(failure.value, "pgcode", None)
        if error.retryable:
            _log.warn(
                "database error during {operation}: {details} (retryable)",
                operation=operation,
                details=error.details,
                sqlstate=sqlstate,
            )
        else:
            diagnostics = getattr(failure.value, "diag", None)
            _log.error(
                "database error during {operation}: {details}: {message}",
                operation=operation,
                details=error.details,
                sqlstate=sqlstate,
                message=getattr(diagnostics, "message_primary", None) or error.details,
            )
        return Failure(error)


class PostgreSQLPersistence(Store):
    """The ``Store`` on one PostgreSQL database (see ``PostgreSQLEngine``)."""

    def __init__(
        self,
        dsn: str,
        clock: IReactorTime,
        *,
        pool_size: int = 8,
        reactor: Any,
        lock_timeout_ms: int = DEFAULT_DB_LOCK_TIMEOUT_MS,
        statement_timeout_ms: int = DEFAULT_DB_STATEMENT_TIMEOUT_MS,
        metrics: Metrics | None = None,
    ) -> None:
        engine = PostgreSQLEngine(
            dsn,
            pool_size=pool_size,
            reactor=reactor,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )
        super().__init__(engine, clock, metrics)
        self.target = self.engine.description
