"""The PostgreSQL connection pool: reconnection, a transaction guard, error classes.

``GuardedPool`` keeps ``size`` txpostgres connections for the engine's
lifetime:

- each connection carries a ``DeadConnectionDetector`` (``_Reconnector``):
  when a query fails because the connection is gone (``pg_terminate_backend``,
  a server restart), or the server closes an idle connection, it is closed and
  reconnected in the background with a capped exponential backoff; calls that
  meet it meanwhile fail at once with a retryable ``DatabaseError``, and the
  pool hands out live connections first;
- after every call the pool checks the connection's transaction status: a
  connection that is not idle (left inside a transaction by a failed
  rollback, say) is discarded and reconnected, so no later operation can run
  inside a dangling transaction.

``classify`` turns any driver failure into (details safe to show, retryable)
from its SQLSTATE, never from its text, which may hold SQL or data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

from runtara.errors import DatabaseError

_T = TypeVar("_T")

_log = Logger(namespace="runtara.persistence.postgresql")

_TRANSACTION_STATUS_NAMES = {
    psycopg2.extensions.TRANSACTION_STATUS_IDLE: "idle",
    psycopg2.extensions.TRANSACTION_STATUS_ACTIVE: "active",
    psycopg2.extensions.TRANSACTION_STATUS_INTRANS: "in transaction",
    psycopg2.extensions.TRANSACTION_STATUS_INERROR: "in failed transaction",
    psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN: "unknown",
}


# -- errors ------------------------------------------------------------------------


class ConnectionDiscarded(Exception):
    """The pool's guard dropped a connection that was not idle after a call."""


class ConnectTimedOut(Exception):
    """The pool's connections were not all open within the start timeout."""


# SQLSTATE -> (details safe to show, retryable).
_SQLSTATE_CATEGORIES: dict[str, tuple[str, bool]] = {
    "40001": ("serialization failure", True),
    "40P01": ("deadlock detected", True),
    "55P03": ("lock not available", True),
    "57014": ("query cancelled", True),
    "57P01": ("server shutting down", True),
    "57P02": ("server shutting down", True),
    "57P03": ("server not accepting connections", True),
    "57P04": ("database dropped", True),
}

# SQLSTATE class (first two characters) -> (details, retryable).
_SQLSTATE_CLASS_CATEGORIES: dict[str, tuple[str, bool]] = {
    "08": ("connection lost", True),
    "53": ("server out of resources", True),
    "58": ("server system error", True),
    "22": ("invalid data", False),
    "23": ("constraint violated", False),
    "42": ("schema or query error", False),
    "XX": ("server internal error", False),
}

# Lower-case fragment of a libpq connection failure -> (details, retryable).
_CONNECT_FAILURES: tuple[tuple[str, str, bool], ...] = (
    ("connection refused", "connection refused", True),
    ("could not translate host name", "unknown host", True),
    ("no such file or directory", "no server socket", True),
    ("timeout expired", "timed out", True),
    ("starting up", "server starting up", True),
    ("shutting down", "server shutting down", True),
    ("recovery mode", "server in recovery", True),
    ("too many", "too many connections", True),
    ("remaining connection slots", "too many connections", True),
    ("authentication failed", "authentication failed", False),
    ("no password supplied", "password required", False),
    ("pg_hba.conf", "connection not allowed by pg_hba.conf", False),
    ("does not exist", "database or role does not exist", False),
)

DRIVER_FAILURES: tuple[type[BaseException], ...] = (
    psycopg2.Error,
    # txpostgres turns a statement the server cancelled (statement_timeout,
    # pg_cancel_backend: SQLSTATE 57014) into CancelledError.
    CancelledError,
    txpostgres.RollbackFailed,
    txpostgres.AlreadyPolling,
    txpostgres.UnexpectedPollResult,
    reconnection.ConnectionDead,
    ConnectionDiscarded,
    ConnectionClosed,
)


def classify(error: BaseException) -> tuple[str, bool]:
    """A driver failure as (details safe to show, retryable)."""
    if isinstance(error, psycopg2.Error):
        return _classify_driver_error(error)
    if isinstance(error, CancelledError):
        return _SQLSTATE_CATEGORIES["57014"]
    if isinstance(error, reconnection.ConnectionDead):
        return "connection lost, reconnecting", True
    if isinstance(error, txpostgres.RollbackFailed | ConnectionDiscarded | ConnectionClosed):
        return "connection lost", True
    return f"driver error ({type(error).__name__})", False


def _classify_driver_error(error: psycopg2.Error) -> tuple[str, bool]:
    code = error.pgcode
    if code is not None:
        category = _SQLSTATE_CATEGORIES.get(code) or _SQLSTATE_CLASS_CATEGORIES.get(code[:2])
        if category is not None:
            return category
    if isinstance(error, psycopg2.InterfaceError):
        return "connection lost", True
    if isinstance(error, psycopg2.OperationalError):
        return ("connection lost", True) if code is None else ("operational error", True)
    name = type(error).__name__
    return (name if code is None else f"{name} (SQLSTATE {code})"), False


def database_error(operation: str, error: BaseException) -> DatabaseError:
    details, retryable = classify(error)
    return DatabaseError(operation, details, retryable)


def _is_connection_dead(failure: Failure) -> bool:
    """The death checker of every pooled connection: is this failure a lost connection?"""
    if failure.check(ConnectionDiscarded, txpostgres.RollbackFailed, psycopg2.InterfaceError):
        return True
    if failure.check(psycopg2.OperationalError):
        code = failure.value.pgcode
        return code is None or code.startswith(("08", "57P"))
    return False


def connect_failure(error: BaseException, timeout_s: float) -> tuple[str, bool]:
    """Why the pool could not open, as (details safe to show, retryable)."""
    if isinstance(error, ConnectTimedOut):
        return f"no connection within {timeout_s:g} s", True
    if isinstance(error, psycopg2.OperationalError):
        text = str(error).lower()
        for fragment, details, retryable in _CONNECT_FAILURES:
            if fragment in text:
                return details, retryable
        return "connection failed", True
    if isinstance(error, psycopg2.ProgrammingError):
        return "invalid connection string", False
    return classify(error)


# -- connections and the pool ----------------------------------------------------------


def _reconnect_delays() -> Iterator[float]:
    """0, then about 0.5, 1, 2, 4 s, then every 5 s until the server is back."""
    return retrying.simpleBackoffIterator(
        initialDelay=0.25, maxDelay=5.0, factor=2.0, maxRetries=0, now=True
    )


class _Reconnector(reconnection.DeadConnectionDetector):
    """txpostgres' dead-connection detector, with a reconnection loop that stops.

    The base class decides when a connection is dead (``_is_connection_dead``)
    and fails calls at once while it is; this subclass runs the reconnection
    attempts on the reactor's timers, logs them, and stops for good when the
    pool closes (an attempt that completes after that is closed again).
    """

    def __init__(self, reactor: Any, name: str) -> None:
        super().__init__(
            deathChecker=_is_connection_dead,
            reconnectionIterator=_reconnect_delays,
            reactor=reactor,
        )
        self.name = name
        self._delays: Iterator[float] = iter(())
        self._pending: IDelayedCall | None = None
        self._stopped = False

    def startReconnecting(self, f: Failure) -> None:
        if self._stopped:
            return
        details, _ = classify(f.value)
        _log.warn(
            "PostgreSQL connection {connection} lost ({reason}); reconnecting",
            connection=self.name,
            reason=details,
        )
        self._delays = self.reconnectionIterator()
        self._schedule(next(self._delays))

    def _schedule(self, delay: float) -> None:
        self._pending = self.reactor.callLater(delay, self._attempt)

    def _attempt(self) -> None:
        self._pending = None
        if self._stopped:
            return
        attempt = maybeDeferred(self.reconnect)
        attempt.addCallbacks(self._reconnected, self._reconnect_failed)

    def _reconnected(self, _: object) -> Deferred[Any] | None:
        if self._stopped:
            _close_connection(self.reconnectable)
            return None
        _log.info("PostgreSQL connection {connection} re-established", connection=self.name)
        return self.connectionRecovered()

    def _reconnect_failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        delay = next(self._delays)
        details, _ = connect_failure(failure.value, 0)
        _log.info(
            "reconnecting PostgreSQL connection {connection} failed ({reason});"
            " next attempt in {delay:.1f} s",
            connection=self.name,
            reason=details,
            delay=delay,
        )
        self._schedule(delay)

    def stop(self) -> None:
        """Never reconnect again; cancel a pending attempt."""
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None


class _PooledConnection(txpostgres.Connection):
    """A txpostgres connection that reconnects itself (see ``_Reconnector``)."""

    def __init__(self, reactor: Any, cooperator: Any, name: str) -> None:
        super().__init__(reactor, cooperator, detector=_Reconnector(reactor, name))
        self.name = name

    def run_with_cursor(self, run: Callable[[Any], Deferred[_T]]) -> Deferred[_T]:
        """``run(cursor)``, alone on this connection and watched for its death.

        Like ``runInteraction`` without its ``BEGIN`` and ``COMMIT`` round
        trips: ``run`` sends its own transaction statements.
        """
        return self._doit(lambda: run(self.cursor()))

    def doRead(self) -> BaseException | None:
        """Read NOTIFY traffic; report a connection the server closed as lost.

        txpostgres raises from here when the server ends an idle session; the
        reactor would log that as an unhandled error before disconnecting.
        Returning the error instead disconnects quietly: ``connectionLost``
        hands it to the detector, which reconnects and logs it.
        """
        try:
            txpostgres.Connection.doRead(self)
        except psycopg2.Error as error:
            return error
        return None

    @property
    def is_reconnecting(self) -> bool:
        return bool(self.detector.connectionIsDead)

    def transaction_status(self) -> str:
        """The session's transaction status by name, ``closed`` when it has none."""
        connection = self._connection
        if connection is None or connection.closed:
            return "closed"
        return _TRANSACTION_STATUS_NAMES.get(connection.get_transaction_status(), "unknown")


def _close_connection(connection: Any) -> None:
    """Close a txpostgres connection whether or not it ever opened."""
    if connection is not None and connection._connection is not None:
        connection.close()


class GuardedPool(txpostgres.ConnectionPool):
    """txpostgres' fixed-size pool with reconnecting connections and a guard.

    Connections are handed out live ones first; after each call the guard
    checks the connection (see ``_guard``) before putting it back.
    """

    def __init__(self, dsn: str, size: int, reactor: Any, connect_kwargs: dict[str, str]) -> None:
        self.reactor = reactor
        self.min = size
        self._serial = itertools.count(1)
        self._timed_out = False
        super().__init__(None, dsn, **connect_kwargs)
        self.all_connections: tuple[_PooledConnection, ...] = tuple(self.connections)

    def connectionFactory(self, reactor: Any, cooperator: Any) -> _PooledConnection:
        return _PooledConnection(reactor, cooperator, f"#{next(self._serial)}")

    async def open(self, timeout_s: float) -> None:
        """Open every connection, or close them all and raise the first failure."""
        opening = [
            connection.connect(*self.connargs, **self.connkw) for connection in self.all_connections
        ]
        timer = self.reactor.callLater(timeout_s, self._abandon_opening)
        try:
            results = await DeferredList(opening, consumeErrors=True)
        finally:
            if timer.active():
                timer.cancel()
        failures = [result for succeeded, result in results if not succeeded]
        if failures:
            self.close()
            if self._timed_out:
                raise ConnectTimedOut()
            failures[0].raiseException()

    def _abandon_opening(self) -> None:
        self._timed_out = True
        self.close()

    def close(self) -> None:
        """Stop every reconnection and close every connection, lent out or not."""
        for connection in self.all_connections:
            connection.detector.stop()
            _close_connection(connection)

    def _checkout(self) -> _PooledConnection:
        for connection in self.connections:
            if not connection.is_reconnecting:
                self.connections.discard(connection)
                return connection
        return self.connections.pop()

    def _checkin(self, result: _T, connection: _PooledConnection) -> _T:
        self._guard(connection)
        self.connections.add(connection)
        return result

    def _guard(self, connection: _PooledConnection) -> None:
        """Discard (close and reconnect) a connection that is not idle after a call."""
        if connection.is_reconnecting:
            return
        status = connection.transaction_status()
        if status == "idle":
            return
        _log.warn(
            "discarding PostgreSQL connection {connection}: {status} after a call",
            connection=connection.name,
            status=status,
        )
        connection.detector.checkForDeadConnection(Failure(ConnectionDiscarded(status)))

    def _lend(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        connection = self._checkout()
        result: Deferred[Any] = getattr(connection, method)(*args, **kwargs)
        return result.addBoth(self._checkin, connection)

    def _runQuery(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._lend("runQuery", *args, **kwargs)

    def _runOperation(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._lend("runOperation", *args, **kwargs)

    def _runInteraction(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._lend("runInteraction", *args, **kwargs)

    def run_with_cursor(self, run: Callable[[Any], Deferred[_T]]) -> Deferred[_T]:
        """``run(cursor)`` on a pooled connection (see ``_PooledConnection.run_with_cursor``)."""
        return self._semaphore.run(self._lend, "run_with_cursor", run)
