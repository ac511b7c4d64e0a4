"""The PostgreSQL provider of ``IPersistence``: a txpostgres pool, no threads.

Every operation is one module-level ``async`` body run by
``runInteraction`` inside one transaction (READ COMMITTED): txpostgres
sends ``BEGIN``, hands the body a cursor whose ``execute()`` returns a
Deferred, which the body awaits statement by statement, then commits, or
rolls back when the body raises. Domain errors raised by a body roll the
transaction back and reach the caller unchanged; every driver failure
becomes ``DatabaseError`` whose details are a short category, never SQL
text, parameters or the connection string.

Concurrency across server processes sharing one database: a body whose
decision depends on the instance (status, sleep, pending signal) first
locks the instance row with ``SELECT ... FOR UPDATE``, so such operations on
one instance run one after another in every process; rows that may be
created concurrently are inserted with ``ON CONFLICT DO NOTHING`` and read
back. ``migrate`` serialises on a transaction-scoped advisory lock.

The pool (``_GuardedPool``) keeps ``pool_size`` connections for the
provider's lifetime:

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

Everything PostgreSQL-specific lives here: ``%s`` placeholders, which
SQLSTATEs are retryable, and the per-connection settings.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres
from zope.interface import implementer

from runtara.errors import (
    CheckpointNotFound,
    DatabaseError,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInstanceState,
)
from runtara.interfaces import IPersistence
from runtara.model import (
    TERMINAL_STATUSES,
    AckResult,
    CheckpointInfo,
    CheckpointResult,
    CustomSignal,
    Event,
    EventRecord,
    EventType,
    InstanceDetails,
    InstanceRecord,
    PendingSignal,
    Registration,
    Signals,
    SignalType,
    SleepPlan,
    Status,
)
from runtara.persistence.migrations import (
    LEDGER_TABLE,
    Migration,
    load_migrations,
    pending_migrations,
)

_T = TypeVar("_T")
_Row = tuple[Any, ...]

_log = Logger(namespace="runtara.persistence.postgresql")

DEFAULT_CONNECT_TIMEOUT_S = 10.0
"""How long ``start()`` waits for the pool's connections unless the DSN sets
``connect_timeout`` (libpq ignores it for the non-blocking connections used here)."""

APPLICATION_NAME = "runtara"
"""The ``application_name`` of the pool's sessions unless the DSN names one."""

_MIGRATION_LOCK = 0x72756E74617261
"""Key of the advisory lock ``migrate`` holds ("runtara" in ASCII)."""

_LEDGER_DDL = (
    f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
)

_INSTANCE_FIELDS = (
    "instance_id",
    "tenant_id",
    "status",
    "checkpoint_id",
    "created_at",
    "started_at",
    "finished_at",
    "sleep_until",
    "output",
    "error",
)
_INSTANCE_COLUMNS = ", ".join(_INSTANCE_FIELDS)

_EVENT_COLUMNS = (
    "event_id, instance_id, event_type, subtype, checkpoint_id, payload, client_ts, created_at"
)

_TERMINAL_VALUES = tuple(sorted(status.value for status in TERMINAL_STATUSES))
_PURGEABLE = "status = ANY(%s) AND finished_at IS NOT NULL AND finished_at < %s"

_ACCEPTED_WHEN_TERMINAL = frozenset({EventType.HEARTBEAT, EventType.CUSTOM})

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


class _ConnectTimedOut(Exception):
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

_DRIVER_FAILURES: tuple[type[BaseException], ...] = (
    psycopg2.Error,
    txpostgres.RollbackFailed,
    txpostgres.AlreadyPolling,
    txpostgres.UnexpectedPollResult,
    reconnection.ConnectionDead,
    ConnectionDiscarded,
    ConnectionClosed,
)


def _classify(error: BaseException) -> tuple[str, bool]:
    """A driver failure as (details safe to show, retryable)."""
    if isinstance(error, psycopg2.Error):
        return _classify_psycopg2(error)
    if isinstance(error, reconnection.ConnectionDead):
        return "connection lost, reconnecting", True
    if isinstance(error, txpostgres.RollbackFailed | ConnectionDiscarded | ConnectionClosed):
        return "connection lost", True
    return f"driver error ({type(error).__name__})", False


def _classify_psycopg2(error: psycopg2.Error) -> tuple[str, bool]:
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


def _database_error(operation: str, error: BaseException) -> DatabaseError:
    details, retryable = _classify(error)
    return DatabaseError(operation, details, retryable)


def _is_connection_dead(failure: Failure) -> bool:
    """The death checker of every pooled connection: is this failure a lost connection?"""
    if failure.check(ConnectionDiscarded, txpostgres.RollbackFailed, psycopg2.InterfaceError):
        return True
    if failure.check(psycopg2.OperationalError):
        code = failure.value.pgcode
        return code is None or code.startswith(("08", "57P"))
    return False


def _connect_failure(error: BaseException, timeout_s: float) -> tuple[str, bool]:
    """Why the pool could not open, as (details safe to show, retryable)."""
    if isinstance(error, _ConnectTimedOut):
        return f"no connection within {timeout_s:g} s", True
    if isinstance(error, psycopg2.OperationalError):
        text = str(error).lower()
        for fragment, details, retryable in _CONNECT_FAILURES:
            if fragment in text:
                return details, retryable
        return "connection failed", True
    if isinstance(error, psycopg2.ProgrammingError):
        return "invalid connection string", False
    return _classify(error)


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
        details, _ = _classify(f.value)
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
        details, _ = _connect_failure(failure.value, 0)
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


class _GuardedPool(txpostgres.ConnectionPool):
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
                raise _ConnectTimedOut()
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


# -- transactions --------------------------------------------------------------------------


class _Transaction:
    """What a body sees: its transaction's cursor and the operation's ``now``."""

    def __init__(self, cursor: Any, now_ms: int) -> None:
        self._cursor = cursor
        self.now_ms = now_ms

    async def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[_Row]:
        """Run one statement; its rows, with every bytea value as ``bytes``."""
        await self._cursor.execute(sql, parameters)
        return [_plain(row) for row in self._cursor.fetchall()]

    async def row(self, sql: str, parameters: Sequence[Any] = ()) -> _Row | None:
        rows = await self.rows(sql, parameters)
        return rows[0] if rows else None

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it touched."""
        await self._cursor.execute(sql, parameters)
        return int(self._cursor.rowcount)

    async def script(self, sql: str) -> None:
        """Run literal SQL, possibly several statements, with no parameters."""
        await self._cursor.execute(sql)


def _plain(row: Sequence[Any]) -> _Row:
    return tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)


def _interaction(
    cursor: Any, body: Callable[..., Awaitable[_T]], now_ms: int, *args: Any
) -> Deferred[_T]:
    """The txpostgres interaction running ``body(transaction, *args)``."""
    return Deferred.fromCoroutine(body(_Transaction(cursor, now_ms), *args))


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


# -- the provider ------------------------------------------------------------------------------


@implementer(IPersistence)
class PostgreSQLPersistence:
    """``IPersistence`` on one PostgreSQL database through a txpostgres pool.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL (it may hold
    a password: it is never logged nor shown in errors). ``clock`` supplies
    every stored time; ``reactor`` runs the connections and their
    reconnection timers. ``pool_size`` connections are opened by ``start``.
    """

    dialect = "postgresql"

    def __init__(self, dsn: str, clock: IReactorTime, *, pool_size: int = 8, reactor: Any) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        self._dsn = dsn
        self._clock = clock
        self._reactor = reactor
        self._pool_size = pool_size
        self._parameters = _parse_dsn(dsn)
        self.target = _describe_target(self._parameters)
        self._pool: _GuardedPool | None = None

    def __repr__(self) -> str:
        return f"<PostgreSQLPersistence {self.target}>"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Open the pool. Fails with a ``DatabaseError`` naming the server, never the password."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._pool is not None:
            return
        if self._parameters is None:
            raise DatabaseError(
                "start", f"cannot connect to {self.target}: invalid connection string", False
            )
        timeout_s = float(self._parameters.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT_S)
        connect_kwargs = {}
        if "application_name" not in self._parameters:
            connect_kwargs["application_name"] = APPLICATION_NAME
        pool = _GuardedPool(self._dsn, self._pool_size, self._reactor, connect_kwargs)
        try:
            await pool.open(timeout_s)
        except Exception as error:
            details, retryable = _connect_failure(error, timeout_s)
            _log.warn("cannot connect to {target}: {reason}", target=self.target, reason=details)
            raise DatabaseError(
                "start", f"cannot connect to {self.target}: {details}", retryable
            ) from None
        self._pool = pool
        _log.info(
            "connected to {target} with {size} connections",
            target=self.target,
            size=self._pool_size,
        )

    def migrate(self) -> Deferred[int]:
        """Apply the pending ``sql/postgresql/`` files, each with its ledger row, atomically."""
        return Deferred.fromCoroutine(self._migrate(load_migrations(self.dialect)))

    async def _migrate(self, migrations: list[Migration]) -> int:
        while True:
            version, applied = await self._transact("migrate", _apply_next_migration, migrations)
            if applied is None:
                return version
            _log.info(
                "applied migration {version} ({name}) to {target}",
                version=applied.version,
                name=applied.name,
                target=self.target,
            )

    def schema_version(self) -> Deferred[int]:
        return self._transact("schema_version", _schema_version)

    def close(self) -> Deferred[None]:
        """Close every connection and stop reconnecting (idempotent). Fires with None."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            _log.info("closed the connections to {target}", target=self.target)
        return succeed(None)

    def check_health(self) -> Deferred[bool]:
        probed = self._transact("check_health", _probe)
        probed.addCallbacks(lambda _: True, lambda _: False)
        return probed

    # -- the instance protocol ----------------------------------------------

    def register_instance(
        self, instance_id: str, tenant_id: str, checkpoint_id: str | None
    ) -> Deferred[Registration]:
        return self._transact(
            "register_instance", _register_instance, instance_id, tenant_id, checkpoint_id
        )

    def save_checkpoint(
        self, instance_id: str, tenant_id: str, checkpoint_id: str, state: bytes
    ) -> Deferred[CheckpointResult]:
        return self._transact(
            "save_checkpoint", _save_checkpoint, instance_id, tenant_id, checkpoint_id, bytes(state)
        )

    def get_checkpoint(
        self, instance_id: str, tenant_id: str | None, checkpoint_id: str
    ) -> Deferred[bytes | None]:
        return self._transact(
            "get_checkpoint", _get_checkpoint, instance_id, tenant_id, checkpoint_id
        )

    def begin_sleep(
        self,
        instance_id: str,
        tenant_id: str,
        checkpoint_id: str,
        state: bytes,
        duration_ms: int,
    ) -> Deferred[SleepPlan]:
        return self._transact(
            "begin_sleep",
            _begin_sleep,
            instance_id,
            tenant_id,
            checkpoint_id,
            bytes(state),
            duration_ms,
        )

    def finish_sleep(self, instance_id: str, checkpoint_id: str) -> Deferred[Status]:
        """See ``IPersistence``; an instance that no longer exists gives ``Status.UNKNOWN``."""
        return self._transact("finish_sleep", _finish_sleep, instance_id, checkpoint_id)

    def record_event(self, instance_id: str, tenant_id: str, event: Event) -> Deferred[None]:
        return self._transact("record_event", _record_event, instance_id, tenant_id, event)

    def get_instance_status(
        self, instance_id: str, tenant_id: str
    ) -> Deferred[InstanceRecord | None]:
        return self._transact("get_instance_status", _get_instance_status, instance_id, tenant_id)

    def poll_signals(
        self, instance_id: str, tenant_id: str, checkpoint_id: str | None
    ) -> Deferred[Signals]:
        return self._transact("poll_signals", _poll_signals, instance_id, tenant_id, checkpoint_id)

    def acknowledge_signal(
        self, instance_id: str, tenant_id: str, signal_type: SignalType, acknowledged: bool
    ) -> Deferred[AckResult]:
        return self._transact(
            "acknowledge_signal",
            _acknowledge_signal,
            instance_id,
            tenant_id,
            SignalType(signal_type),
            acknowledged,
        )

    def record_retry_attempt(
        self,
        instance_id: str,
        tenant_id: str,
        checkpoint_id: str,
        attempt_number: int,
        timestamp_ms: int | None,
        error_message: str | None,
    ) -> Deferred[None]:
        return self._transact(
            "record_retry_attempt",
            _record_retry_attempt,
            instance_id,
            tenant_id,
            checkpoint_id,
            attempt_number,
            timestamp_ms,
            error_message,
        )

    # -- management -----------------------------------------------------------

    def send_signal(
        self, instance_id: str, signal_type: SignalType, payload: bytes
    ) -> Deferred[None]:
        return self._transact(
            "send_signal", _send_signal, instance_id, SignalType(signal_type), bytes(payload)
        )

    def send_custom_signal(
        self, instance_id: str, checkpoint_id: str, payload: bytes
    ) -> Deferred[None]:
        return self._transact(
            "send_custom_signal", _send_custom_signal, instance_id, checkpoint_id, bytes(payload)
        )

    def create_instance(self, instance_id: str, tenant_id: str) -> Deferred[InstanceRecord]:
        return self._transact("create_instance", _create_instance, instance_id, tenant_id)

    def get_instance(self, instance_id: str) -> Deferred[InstanceDetails]:
        return self._transact("get_instance", _get_instance, instance_id)

    def list_instances(
        self, tenant_id: str | None, status: Status | None, limit: int, offset: int
    ) -> Deferred[list[InstanceRecord]]:
        return self._transact("list_instances", _list_instances, tenant_id, status, limit, offset)

    def count_instances(self, tenant_id: str | None, status: Status | None) -> Deferred[int]:
        return self._transact("count_instances", _count_instances, tenant_id, status)

    def count_by_status(self) -> Deferred[dict[Status, int]]:
        return self._transact("count_by_status", _count_by_status)

    def list_checkpoints(
        self, instance_id: str, limit: int, offset: int
    ) -> Deferred[list[CheckpointInfo]]:
        return self._transact("list_checkpoints", _list_checkpoints, instance_id, limit, offset)

    def list_events(
        self,
        instance_id: str,
        event_type: EventType | None,
        subtype: str | None,
        limit: int,
        offset: int,
    ) -> Deferred[list[EventRecord]]:
        return self._transact(
            "list_events", _list_events, instance_id, event_type, subtype, limit, offset
        )

    def count_purgeable(self, finished_before_ms: int) -> Deferred[int]:
        return self._transact("count_purgeable", _count_purgeable, finished_before_ms)

    def purge_finished(self, finished_before_ms: int, limit: int) -> Deferred[int]:
        return self._transact("purge_finished", _purge_finished, finished_before_ms, limit)

    # -- running transactions -------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _transact(
        self, operation: str, body: Callable[..., Awaitable[_T]], *args: Any
    ) -> Deferred[_T]:
        """Run ``body(transaction, *args)`` as ``operation`` in one transaction."""
        pool = self._pool
        if pool is None:
            return fail(DatabaseError(operation, "database is not open", retryable=False))
        ran: Deferred[_T] = pool.runInteraction(_interaction, body, self._now_ms(), *args)
        ran.addErrback(self._translate_failure, operation)
        return ran

    def _translate_failure(self, failure: Failure, operation: str) -> Failure:
        """Turn a driver failure into ``DatabaseError``; domain errors pass unchanged."""
        if not failure.check(*_DRIVER_FAILURES):
            return failure
        error = _database_error(operation, failure.value)
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


# -- migrations -------------------------------------------------------------------------


async def _probe(tx: _Transaction) -> None:
    await tx.rows("SELECT 1")


async def _apply_next_migration(
    tx: _Transaction, migrations: list[Migration]
) -> tuple[int, Migration | None]:
    """Apply the first pending migration with its ledger row, if any is pending.

    The advisory lock is held until this transaction ends, so a second
    process migrating at the same time waits, then reads the ledger this one
    wrote and never applies a file twice.
    """
    await tx.rows("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    await tx.execute(_LEDGER_DDL)
    version = await _applied_version(tx)
    pending = pending_migrations(migrations, version)
    if not pending:
        return version, None
    migration = pending[0]
    await tx.script(migration.sql)
    await tx.execute(
        f"INSERT INTO {LEDGER_TABLE} (version, name, applied_at) VALUES (%s, %s, %s)",
        (migration.version, migration.name, tx.now_ms),
    )
    return migration.version, migration


async def _applied_version(tx: _Transaction) -> int:
    row = await tx.row(f"SELECT COALESCE(MAX(version), 0) FROM {LEDGER_TABLE}")
    assert row is not None
    return int(row[0])


async def _schema_version(tx: _Transaction) -> int:
    ledger = await tx.row("SELECT to_regclass(%s)", (LEDGER_TABLE,))
    if ledger is None or ledger[0] is None:
        return 0
    return await _applied_version(tx)


# -- rows and shared steps ------------------------------------------------------------------


def _instance_from_row(row: Sequence[Any]) -> InstanceRecord:
    (
        instance_id,
        tenant_id,
        status,
        checkpoint_id,
        created_at,
        started_at,
        finished_at,
        sleep_until,
        output,
        error,
    ) = row
    return InstanceRecord(
        instance_id=instance_id,
        tenant_id=tenant_id,
        status=Status(status),
        checkpoint_id=checkpoint_id,
        created_at_ms=created_at,
        started_at_ms=started_at,
        finished_at_ms=finished_at,
        sleep_until_ms=sleep_until,
        output=output,
        error=error,
    )


def _event_from_row(row: Sequence[Any]) -> EventRecord:
    event_id, instance_id, event_type, subtype, checkpoint_id, payload, client_ts, created = row
    return EventRecord(
        event_id=event_id,
        instance_id=instance_id,
        event_type=EventType(event_type),
        subtype=subtype,
        checkpoint_id=checkpoint_id,
        payload=payload,
        client_ts_ms=client_ts,
        created_at_ms=created,
    )


async def _find_instance(
    tx: _Transaction, instance_id: str, *, lock: bool = False
) -> InstanceRecord | None:
    """The instance row; ``lock`` takes its row lock until the transaction ends."""
    row = await tx.row(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = %s"
        + (" FOR UPDATE" if lock else ""),
        (instance_id,),
    )
    return None if row is None else _instance_from_row(row)


async def _existing_instance(
    tx: _Transaction, instance_id: str, tenant_id: str | None = None, *, lock: bool = False
) -> InstanceRecord:
    """The instance as ``tenant_id`` may see it (None: any tenant), else ``InstanceNotFound``."""
    instance = await _find_instance(tx, instance_id, lock=lock)
    if instance is None or (tenant_id is not None and instance.tenant_id != tenant_id):
        raise InstanceNotFound(instance_id)
    return instance


def _require_running(instance: InstanceRecord) -> None:
    if instance.status is not Status.RUNNING:
        raise InvalidInstanceState(instance.instance_id, "running", instance.status.value)


def _require_non_terminal(instance: InstanceRecord) -> None:
    if instance.status.is_terminal:
        raise InvalidInstanceState(instance.instance_id, "non-terminal", instance.status.value)


async def _set_status(tx: _Transaction, instance_id: str, status: Status) -> None:
    await tx.execute(
        "UPDATE instances SET status = %s WHERE instance_id = %s", (status.value, instance_id)
    )


async def _insert_event(
    tx: _Transaction,
    instance_id: str,
    event_type: EventType,
    *,
    checkpoint_id: str | None = None,
    payload: bytes = b"",
    subtype: str | None = None,
    client_ts_ms: int | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO events"
        " (instance_id, event_type, subtype, checkpoint_id, payload, client_ts, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            instance_id,
            EventType(event_type).value,
            subtype,
            checkpoint_id,
            bytes(payload),
            client_ts_ms,
            tx.now_ms,
        ),
    )


async def _has_checkpoint(tx: _Transaction, instance_id: str, checkpoint_id: str) -> bool:
    row = await tx.row(
        "SELECT 1 FROM checkpoints WHERE instance_id = %s AND checkpoint_id = %s",
        (instance_id, checkpoint_id),
    )
    return row is not None


async def _has_any_checkpoint(tx: _Transaction, instance_id: str) -> bool:
    row = await tx.row("SELECT 1 FROM checkpoints WHERE instance_id = %s LIMIT 1", (instance_id,))
    return row is not None


async def _stored_state(tx: _Transaction, instance_id: str, checkpoint_id: str) -> bytes | None:
    row = await tx.row(
        "SELECT state FROM checkpoints WHERE instance_id = %s AND checkpoint_id = %s",
        (instance_id, checkpoint_id),
    )
    return None if row is None else bytes(row[0])


async def _store_checkpoint(
    tx: _Transaction, instance_id: str, checkpoint_id: str, state: bytes
) -> bytes | None:
    """Store a first checkpoint and make it current; if one exists, return its state.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key to
    commit or roll back, so of two concurrent first saves exactly one stores
    and the other reads the winner's state back.
    """
    inserted = await tx.row(
        "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at)"
        " VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (instance_id, checkpoint_id) DO NOTHING RETURNING 1",
        (instance_id, checkpoint_id, state, tx.now_ms),
    )
    if inserted is None:
        return await _stored_state(tx, instance_id, checkpoint_id)
    await tx.execute(
        "UPDATE instances SET checkpoint_id = %s WHERE instance_id = %s",
        (checkpoint_id, instance_id),
    )
    return None


async def _pending_signal(tx: _Transaction, instance_id: str) -> PendingSignal | None:
    row = await tx.row(
        "SELECT signal_type, payload FROM signals"
        " WHERE instance_id = %s AND acknowledged_at IS NULL",
        (instance_id,),
    )
    return None if row is None else PendingSignal(SignalType(row[0]), row[1])


async def _take_custom_signal(
    tx: _Transaction, instance_id: str, checkpoint_id: str
) -> CustomSignal | None:
    """Delete and return the custom signal pending for (id, cp), if any."""
    row = await tx.row(
        "DELETE FROM custom_signals WHERE instance_id = %s AND checkpoint_id = %s"
        " RETURNING payload",
        (instance_id, checkpoint_id),
    )
    return None if row is None else CustomSignal(checkpoint_id, row[0])


async def _count(tx: _Transaction, sql: str, parameters: Sequence[Any]) -> int:
    row = await tx.row(sql, parameters)
    assert row is not None
    return int(row[0])


# -- the instance protocol ----------------------------------------------------------------


async def _register_instance(
    tx: _Transaction, instance_id: str, tenant_id: str, checkpoint_id: str | None
) -> Registration:
    instance = await _find_instance(tx, instance_id, lock=True)
    if instance is None:
        if checkpoint_id is not None:
            return _refusal(Status.UNKNOWN, CheckpointNotFound(instance_id, checkpoint_id).message)
        if await _insert_running_instance(tx, instance_id, tenant_id):
            await _insert_event(tx, instance_id, EventType.STARTED)
            return Registration(success=True, status=Status.RUNNING, resumed=False)
        # Another process created it since our SELECT: register the existing one.
        instance = await _existing_instance(tx, instance_id, lock=True)
    if instance.tenant_id != tenant_id:
        return _refusal(Status.UNKNOWN, InstanceNotFound(instance_id).message)
    if instance.status.is_terminal:
        return _refusal(
            instance.status, f"Instance '{instance_id}' is already {instance.status.value}"
        )
    if checkpoint_id is not None and not await _has_checkpoint(tx, instance_id, checkpoint_id):
        return _refusal(instance.status, CheckpointNotFound(instance_id, checkpoint_id).message)
    resumed = await _has_any_checkpoint(tx, instance_id)
    await tx.execute(
        "UPDATE instances SET status = %s, started_at = %s WHERE instance_id = %s",
        (Status.RUNNING.value, tx.now_ms, instance_id),
    )
    await _insert_event(tx, instance_id, EventType.STARTED, checkpoint_id=checkpoint_id)
    return Registration(success=True, status=Status.RUNNING, resumed=resumed)


async def _insert_running_instance(tx: _Transaction, instance_id: str, tenant_id: str) -> bool:
    """Create the instance ``running``; False when the id exists (a concurrent create)."""
    inserted = await tx.row(
        "INSERT INTO instances (instance_id, tenant_id, status, created_at, started_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (instance_id) DO NOTHING RETURNING 1",
        (instance_id, tenant_id, Status.RUNNING.value, tx.now_ms, tx.now_ms),
    )
    return inserted is not None


def _refusal(status: Status, error: str) -> Registration:
    return Registration(success=False, status=status, resumed=False, error=error)


async def _save_checkpoint(
    tx: _Transaction, instance_id: str, tenant_id: str, checkpoint_id: str, state: bytes
) -> CheckpointResult:
    _require_running(await _existing_instance(tx, instance_id, tenant_id, lock=True))
    stored = await _store_checkpoint(tx, instance_id, checkpoint_id, state)
    return CheckpointResult(
        found=stored is not None,
        state=b"" if stored is None else stored,
        pending_signal=await _pending_signal(tx, instance_id),
        custom_signal=await _take_custom_signal(tx, instance_id, checkpoint_id),
    )


async def _get_checkpoint(
    tx: _Transaction, instance_id: str, tenant_id: str | None, checkpoint_id: str
) -> bytes | None:
    await _existing_instance(tx, instance_id, tenant_id)
    return await _stored_state(tx, instance_id, checkpoint_id)


async def _begin_sleep(
    tx: _Transaction,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str,
    state: bytes,
    duration_ms: int,
) -> SleepPlan:
    instance = await _existing_instance(tx, instance_id, tenant_id, lock=True)
    _require_running(instance)
    if await _store_checkpoint(tx, instance_id, checkpoint_id, state) is None:
        wake_at_ms = tx.now_ms + duration_ms
        await tx.execute(
            "UPDATE instances SET status = %s, sleep_until = %s WHERE instance_id = %s",
            (Status.SUSPENDED.value, wake_at_ms, instance_id),
        )
        await _insert_event(tx, instance_id, EventType.SLEEP, checkpoint_id=checkpoint_id)
        return SleepPlan(wake_at_ms)
    if instance.sleep_until_ms is None:
        return SleepPlan(None)
    await _set_status(tx, instance_id, Status.SUSPENDED)
    return SleepPlan(instance.sleep_until_ms)


async def _finish_sleep(tx: _Transaction, instance_id: str, checkpoint_id: str) -> Status:
    instance = await _find_instance(tx, instance_id, lock=True)
    if instance is None:
        return Status.UNKNOWN
    if instance.status is not Status.SUSPENDED or instance.sleep_until_ms is None:
        return instance.status
    await tx.execute(
        "UPDATE instances SET status = %s, sleep_until = NULL WHERE instance_id = %s",
        (Status.RUNNING.value, instance_id),
    )
    await _insert_event(tx, instance_id, EventType.WAKE, checkpoint_id=checkpoint_id)
    return Status.RUNNING


async def _record_event(tx: _Transaction, instance_id: str, tenant_id: str, event: Event) -> None:
    instance = await _existing_instance(tx, instance_id, tenant_id, lock=True)
    event_type = EventType(event.event_type)
    if event_type not in _ACCEPTED_WHEN_TERMINAL:
        _require_non_terminal(instance)
    await _insert_event(
        tx,
        instance_id,
        event_type,
        checkpoint_id=event.checkpoint_id,
        payload=event.payload,
        subtype=event.subtype,
        client_ts_ms=event.timestamp_ms,
    )
    if event_type is EventType.COMPLETED:
        await tx.execute(
            "UPDATE instances SET status = %s, finished_at = %s, output = %s"
            " WHERE instance_id = %s",
            (Status.COMPLETED.value, tx.now_ms, bytes(event.payload), instance_id),
        )
    elif event_type is EventType.FAILED:
        await tx.execute(
            "UPDATE instances SET status = %s, finished_at = %s, error = %s WHERE instance_id = %s",
            (Status.FAILED.value, tx.now_ms, _error_text(event.payload), instance_id),
        )
    elif event_type is EventType.SUSPENDED:
        await _set_status(tx, instance_id, Status.SUSPENDED)


def _error_text(payload: bytes) -> str:
    """A failed event's payload as the instance's error text (PROTOCOL.md 6.5)."""
    if not payload:
        return "Unknown error"
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return "Unknown error (binary payload)"


async def _get_instance_status(
    tx: _Transaction, instance_id: str, tenant_id: str
) -> InstanceRecord | None:
    instance = await _find_instance(tx, instance_id)
    if instance is None or instance.tenant_id != tenant_id:
        return None
    return instance


async def _poll_signals(
    tx: _Transaction, instance_id: str, tenant_id: str, checkpoint_id: str | None
) -> Signals:
    await _existing_instance(tx, instance_id, tenant_id)
    custom = (
        None if checkpoint_id is None else await _take_custom_signal(tx, instance_id, checkpoint_id)
    )
    return Signals(signal=await _pending_signal(tx, instance_id), custom_signal=custom)


async def _acknowledge_signal(
    tx: _Transaction,
    instance_id: str,
    tenant_id: str,
    signal_type: SignalType,
    acknowledged: bool,
) -> AckResult:
    instance = await _existing_instance(tx, instance_id, tenant_id, lock=True)
    pending = await _pending_signal(tx, instance_id)
    if not acknowledged or pending is None or pending.signal_type is not signal_type:
        return AckResult(success=False, status=instance.status)
    await tx.execute(
        "UPDATE signals SET acknowledged_at = %s WHERE instance_id = %s",
        (tx.now_ms, instance_id),
    )
    return AckResult(success=True, status=await _apply_signal(tx, instance, signal_type))


async def _apply_signal(
    tx: _Transaction, instance: InstanceRecord, signal_type: SignalType
) -> Status:
    """Change the status an acknowledged signal asks for; return the status after."""
    if instance.status.is_terminal:
        return instance.status
    if signal_type is SignalType.CANCEL:
        await tx.execute(
            "UPDATE instances SET status = %s, finished_at = %s WHERE instance_id = %s",
            (Status.CANCELLED.value, tx.now_ms, instance.instance_id),
        )
        return Status.CANCELLED
    if signal_type is SignalType.PAUSE:
        await _set_status(tx, instance.instance_id, Status.SUSPENDED)
        return Status.SUSPENDED
    if instance.status is Status.SUSPENDED and instance.sleep_until_ms is None:
        await _set_status(tx, instance.instance_id, Status.RUNNING)
        return Status.RUNNING
    return instance.status


async def _record_retry_attempt(
    tx: _Transaction,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str,
    attempt_number: int,
    timestamp_ms: int | None,
    error_message: str | None,
) -> None:
    await _existing_instance(tx, instance_id, tenant_id)
    await tx.execute(
        "INSERT INTO retry_attempts"
        " (instance_id, checkpoint_id, attempt_number, client_ts, error_message, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (instance_id, checkpoint_id, attempt_number) DO NOTHING",
        (instance_id, checkpoint_id, attempt_number, timestamp_ms, error_message, tx.now_ms),
    )


# -- management ----------------------------------------------------------------------------


async def _send_signal(
    tx: _Transaction, instance_id: str, signal_type: SignalType, payload: bytes
) -> None:
    _require_non_terminal(await _existing_instance(tx, instance_id, lock=True))
    await tx.execute(
        "INSERT INTO signals (instance_id, signal_type, payload, created_at, acknowledged_at)"
        " VALUES (%s, %s, %s, %s, NULL)"
        " ON CONFLICT (instance_id) DO UPDATE SET signal_type = excluded.signal_type,"
        " payload = excluded.payload, created_at = excluded.created_at, acknowledged_at = NULL",
        (instance_id, signal_type.value, payload, tx.now_ms),
    )


async def _send_custom_signal(
    tx: _Transaction, instance_id: str, checkpoint_id: str, payload: bytes
) -> None:
    await _existing_instance(tx, instance_id)
    await tx.execute(
        "INSERT INTO custom_signals (instance_id, checkpoint_id, payload, created_at)"
        " VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (instance_id, checkpoint_id) DO UPDATE SET"
        " payload = excluded.payload, created_at = excluded.created_at",
        (instance_id, checkpoint_id, payload, tx.now_ms),
    )


async def _create_instance(tx: _Transaction, instance_id: str, tenant_id: str) -> InstanceRecord:
    row = await tx.row(
        "INSERT INTO instances (instance_id, tenant_id, status, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (instance_id) DO NOTHING"
        f" RETURNING {_INSTANCE_COLUMNS}",
        (instance_id, tenant_id, Status.PENDING.value, tx.now_ms),
    )
    if row is None:
        raise InstanceAlreadyExists(instance_id)
    return _instance_from_row(row)


async def _get_instance(tx: _Transaction, instance_id: str) -> InstanceDetails:
    """The instance with its pending signal and counts, read in one statement (one snapshot)."""
    instance_columns = ", ".join(f"i.{field}" for field in _INSTANCE_FIELDS)
    row = await tx.row(
        f"SELECT {instance_columns}, s.signal_type, s.payload,"
        " (SELECT COUNT(*) FROM checkpoints c WHERE c.instance_id = i.instance_id),"
        " (SELECT COUNT(*) FROM events e WHERE e.instance_id = i.instance_id)"
        " FROM instances i LEFT JOIN signals s"
        " ON s.instance_id = i.instance_id AND s.acknowledged_at IS NULL"
        " WHERE i.instance_id = %s",
        (instance_id,),
    )
    if row is None:
        raise InstanceNotFound(instance_id)
    width = len(_INSTANCE_FIELDS)
    signal_type, payload, checkpoint_count, event_count = row[width:]
    pending = None if signal_type is None else PendingSignal(SignalType(signal_type), payload)
    return InstanceDetails(
        instance=_instance_from_row(row[:width]),
        pending_signal=pending,
        checkpoint_count=int(checkpoint_count),
        event_count=int(event_count),
    )


def _instance_filter(tenant_id: str | None, status: Status | None) -> tuple[str, list[Any]]:
    """A WHERE clause (possibly empty) and its parameters for instance listings."""
    conditions = []
    parameters: list[Any] = []
    if tenant_id is not None:
        conditions.append("tenant_id = %s")
        parameters.append(tenant_id)
    if status is not None:
        conditions.append("status = %s")
        parameters.append(Status(status).value)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return where, parameters


async def _list_instances(
    tx: _Transaction, tenant_id: str | None, status: Status | None, limit: int, offset: int
) -> list[InstanceRecord]:
    where, parameters = _instance_filter(tenant_id, status)
    rows = await tx.rows(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances{where}"
        " ORDER BY created_at DESC, instance_id DESC LIMIT %s OFFSET %s",
        (*parameters, limit, offset),
    )
    return [_instance_from_row(row) for row in rows]


async def _count_instances(tx: _Transaction, tenant_id: str | None, status: Status | None) -> int:
    where, parameters = _instance_filter(tenant_id, status)
    return await _count(tx, f"SELECT COUNT(*) FROM instances{where}", parameters)


async def _count_by_status(tx: _Transaction) -> dict[Status, int]:
    rows = await tx.rows("SELECT status, COUNT(*) FROM instances GROUP BY status")
    return {Status(status): int(count) for status, count in rows}


async def _list_checkpoints(
    tx: _Transaction, instance_id: str, limit: int, offset: int
) -> list[CheckpointInfo]:
    await _existing_instance(tx, instance_id)
    rows = await tx.rows(
        "SELECT checkpoint_id, octet_length(state), created_at FROM checkpoints"
        " WHERE instance_id = %s"
        " ORDER BY created_at DESC, checkpoint_id DESC LIMIT %s OFFSET %s",
        (instance_id, limit, offset),
    )
    return [
        CheckpointInfo(checkpoint_id, int(size), created) for checkpoint_id, size, created in rows
    ]


async def _list_events(
    tx: _Transaction,
    instance_id: str,
    event_type: EventType | None,
    subtype: str | None,
    limit: int,
    offset: int,
) -> list[EventRecord]:
    await _existing_instance(tx, instance_id)
    conditions = ["instance_id = %s"]
    parameters: list[Any] = [instance_id]
    if event_type is not None:
        conditions.append("event_type = %s")
        parameters.append(EventType(event_type).value)
    if subtype is not None:
        conditions.append("subtype = %s")
        parameters.append(subtype)
    rows = await tx.rows(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(conditions)}"
        " ORDER BY event_id DESC LIMIT %s OFFSET %s",
        (*parameters, limit, offset),
    )
    return [_event_from_row(row) for row in rows]


async def _count_purgeable(tx: _Transaction, finished_before_ms: int) -> int:
    return await _count(
        tx,
        f"SELECT COUNT(*) FROM instances WHERE {_PURGEABLE}",
        (list(_TERMINAL_VALUES), finished_before_ms),
    )


async def _purge_finished(tx: _Transaction, finished_before_ms: int, limit: int) -> int:
    """Delete the oldest purgeable instances; their rows go by ON DELETE CASCADE."""
    return await tx.execute(
        "DELETE FROM instances WHERE instance_id IN ("
        f" SELECT instance_id FROM instances WHERE {_PURGEABLE}"
        " ORDER BY finished_at, instance_id LIMIT %s)",
        (list(_TERMINAL_VALUES), finished_before_ms, limit),
    )
