"""The SQLite provider of ``IPersistence``: one database file, one connection.

Built on ``twisted.enterprise.adbapi`` with a pool of exactly one connection.
SQLite admits one writer at a time, so this process runs its operations one
after another in the pool's thread (concurrent first checkpoints are serial by
construction); other processes on the same file, such as the ``runtara`` CLI,
wait up to the busy timeout for the write lock.

Every operation is one module-level function (its body) run in the pool
thread. Operations that arrive while the connection is busy are committed
together (group commit, see ``_GroupCommitter``): one ``BEGIN IMMEDIATE``
(``BEGIN`` when none of them writes), each body inside its own savepoint -
released, or rolled back alone on any exception - and one ``COMMIT``, so a
burst of operations pays for one fsync. Each operation stays all-or-nothing,
and its caller is answered only after the ``COMMIT`` that made it durable.
The connection is opened with ``isolation_level=None`` so that the
``sqlite3`` module never opens or commits a transaction on its own. Bodies
only touch the database, so running one again after a retryable failure is
safe.

Everything that differs from other engines lives here: ``?`` placeholders,
the per-connection pragmas and which SQLite errors are retryable.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
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

# adbapi hands bodies its own Connection wrapper, which delegates every
# attribute to the sqlite3.Connection it holds; bodies use it as one.
_Db = sqlite3.Connection

_WRITE = "BEGIN IMMEDIATE"
_READ = "BEGIN"

MAX_BATCH = 256
"""The most operations one group-commit transaction holds."""

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

_LEDGER_DDL = (
    f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
)

_INSTANCE_COLUMNS = (
    "instance_id, tenant_id, status, checkpoint_id, created_at, started_at,"
    " finished_at, sleep_until, output, error"
)

_EVENT_COLUMNS = (
    "event_id, instance_id, event_type, subtype, checkpoint_id, payload, client_ts, created_at"
)

_TERMINAL_VALUES = tuple(sorted(status.value for status in TERMINAL_STATUSES))
_PURGEABLE = (
    f"status IN ({', '.join('?' * len(_TERMINAL_VALUES))})"
    " AND finished_at IS NOT NULL AND finished_at < ?"
)

_ACCEPTED_WHEN_TERMINAL = frozenset({EventType.HEARTBEAT, EventType.CUSTOM})


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


@dataclass
class _Operation:
    """One queued operation: ``function(connection, *args)`` and its caller's Deferred.

    ``begin`` is ``_WRITE`` or ``_READ`` for a body that the committer runs in
    a transaction; ``None`` for a function that manages its own transactions
    and therefore runs alone (``migrate``).
    """

    begin: str | None
    function: Callable[..., Any]
    args: tuple[Any, ...]
    done: Deferred[Any] = field(default_factory=Deferred)


class _GroupCommitter:
    """Runs operations on the pool's one connection, many per transaction.

    The rule: at most one pool call runs at a time. An operation submitted
    while one runs waits in a queue on the reactor thread; when the running
    call ends, every waiting operation (up to ``max_batch``, in arrival
    order) goes to the pool thread in one call that runs them in one
    transaction: ``BEGIN IMMEDIATE`` (``BEGIN`` if none of them writes), then
    for each one ``SAVEPOINT``, its body and ``RELEASE``, or on any exception
    from the body ``ROLLBACK TO`` and ``RELEASE``, which undoes that
    operation alone and keeps its exception as its answer; then one
    ``COMMIT``. Only after the ``COMMIT`` succeeded is any operation of the
    batch answered (its result or its own exception). If ``BEGIN`` or
    ``COMMIT`` fails, or an error ends the whole transaction, the
    transaction is rolled back and every operation of the batch fails with
    that error: nothing of the batch is written.

    Nothing waits for company: an operation submitted while the connection
    is idle starts at once, alone. A batch of one needs no savepoint (the
    transaction's rollback is the operation's own), so it runs as a plain
    transaction, and its exception is its answer. Operations that manage
    their own transactions (``_Operation.begin`` is None) run alone, in their
    place in the queue.

    ``close`` stops taking operations, lets the queued ones run and be
    answered, then closes the pool and calls ``on_closed``.
    """

    _log = Logger()

    def __init__(
        self, pool: ConnectionPool, on_closed: Callable[[_GroupCommitter], None], max_batch: int
    ) -> None:
        self._pool = pool
        self._on_closed = on_closed
        self._max_batch = max_batch
        self._queue: deque[_Operation] = deque()
        self._running = False
        self._closed_waiters: list[Deferred[None]] | None = None
        self._closed = False

    @property
    def closing(self) -> bool:
        """Whether ``close`` was called (the provider submits nothing more)."""
        return self._closed_waiters is not None or self._closed

    def submit(
        self, begin: str | None, function: Callable[..., _T], args: tuple[Any, ...]
    ) -> Deferred[_T]:
        """Queue ``function(connection, *args)``; fires with its outcome once committed."""
        operation = _Operation(begin, function, args)
        self._queue.append(operation)
        self._next()
        return operation.done

    def close(self) -> Deferred[None]:
        """Fire with None once every queued operation was answered and the pool closed."""
        if self._closed:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        if self._closed_waiters is None:
            self._closed_waiters = []
        self._closed_waiters.append(closed)
        self._close_if_drained()
        return closed

    def _next(self) -> None:
        """Start the next pool call, unless one runs or nothing waits."""
        if self._running or not self._queue:
            return
        batch = self._take_batch()
        self._running = True
        first = batch[0]
        if first.begin is None:
            ran = self._pool.runWithConnection(_run_alone, first.function, first.args)
        elif len(batch) == 1:
            transaction = (first.begin, first.function, *first.args)
            ran = self._pool.runWithConnection(_run_alone, _in_transaction, transaction)
        else:
            begin = _WRITE if any(op.begin == _WRITE for op in batch) else _READ
            bodies = [(op.function, op.args) for op in batch]
            ran = self._pool.runWithConnection(_run_batch, begin, bodies)
        ran.addCallbacks(
            self._committed, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _take_batch(self) -> list[_Operation]:
        """The oldest operation alone if it runs alone, else the transactional run after it."""
        batch = [self._queue.popleft()]
        if batch[0].begin is None:
            return batch
        while self._queue and len(batch) < self._max_batch and self._queue[0].begin is not None:
            batch.append(self._queue.popleft())
        return batch

    def _committed(self, outcomes: list[Any], batch: list[_Operation]) -> None:
        # The next batch starts before this one's callers are answered, so the
        # pool thread works while the reactor thread runs their callbacks.
        self._running = False
        self._next()
        for operation, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Failure):
                operation.done.errback(outcome)
            else:
                operation.done.callback(outcome)
        self._close_if_drained()

    def _batch_failed(self, failure: Failure, batch: list[_Operation]) -> None:
        self._running = False
        if len(batch) > 1:
            self._log.warn(
                "group commit of {count} operations failed, none of them was written: {error}",
                count=len(batch),
                error=type(failure.value).__name__,
            )
        self._next()
        for operation in batch:
            operation.done.errback(failure)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        """Close the pool and answer ``close`` once closing and nothing runs or waits."""
        if self._closed_waiters is None or self._running or self._queue:
            return
        waiters, self._closed_waiters = self._closed_waiters, None
        self._closed = True
        self._pool.close()
        self._on_closed(self)
        for waiter in waiters:
            waiter.callback(None)


@implementer(IPersistence)
class SQLitePersistence:
    """``IPersistence`` on one SQLite file, through one adbapi pool connection.

    ``clock`` supplies every stored time; ``reactor`` runs the pool's thread.
    ``synchronous`` is SQLite's durability setting for this connection
    (``FULL`` by default: a committed operation survives a power loss);
    ``busy_timeout_ms`` is how long a write waits for another process's lock.
    """

    _log = Logger()
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        reactor: IReactorCore,
        synchronous: str = "FULL",
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
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
        self._clock = clock
        self._reactor = reactor
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._committer: _GroupCommitter | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Open the pool and its connection (applying the pragmas). Fires with None."""
        if self._committer is None or self._committer.closing:
            pool = ConnectionPool(
                "sqlite3",
                self.path,
                check_same_thread=False,
                isolation_level=None,
                cp_min=1,
                cp_max=1,
                cp_openfun=self._configure_connection,
                cp_reactor=self._reactor,
            )
            pool.start()
            self._committer = _GroupCommitter(pool, self._committer_closed, MAX_BATCH)
        opened = self._read("start", _probe)
        opened.addCallbacks(self._started, self._start_failed)
        return opened

    def _started(self, _: object) -> None:
        self._log.info(
            "opened SQLite database {path} (synchronous={synchronous})",
            path=self.path,
            synchronous=self._synchronous,
        )

    def _start_failed(self, failure: Failure) -> Deferred[Failure]:
        closed = self.close()
        closed.addCallback(lambda _: failure)
        return closed

    def _configure_connection(self, connection: sqlite3.Connection) -> None:
        """Per-connection settings; adbapi calls this on every new connection."""
        try:
            connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            connection.execute("PRAGMA journal_mode = WAL").fetchall()
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise

    def migrate(self) -> Deferred[int]:
        """Apply the pending ``sql/sqlite/`` files, each with its ledger row, atomically."""
        migrations = load_migrations(self.dialect)
        migrated = self._run("migrate", None, _migrate, migrations, self._now_ms())
        migrated.addCallback(self._migrated)
        return migrated

    def _migrated(self, outcome: tuple[int, list[Migration]]) -> int:
        version, applied = outcome
        for migration in applied:
            self._log.info(
                "applied migration {version} ({name}) to {path}",
                version=migration.version,
                name=migration.name,
                path=self.path,
            )
        return version

    def schema_version(self) -> Deferred[int]:
        return self._read("schema_version", _schema_version)

    def close(self) -> Deferred[None]:
        """Close the pool (idempotent). Fires with None once it is closed.

        Operations submitted before are run and answered first (the queue
        drains); operations submitted from now on fail with "database is not
        open".
        """
        if self._committer is None:
            return succeed(None)
        return self._committer.close()

    def _committer_closed(self, committer: _GroupCommitter) -> None:
        if self._committer is committer:
            self._committer = None
        self._log.info("closed SQLite database {path}", path=self.path)

    def check_health(self) -> Deferred[bool]:
        probed = self._read("check_health", _probe)
        probed.addCallbacks(lambda _: True, lambda _: False)
        return probed

    def connection_settings(self) -> Deferred[dict[str, object]]:
        """Fire with the pragmas in force on the pool's connection (diagnostics)."""
        return self._read("connection_settings", _connection_settings)

    # -- the instance protocol ----------------------------------------------

    def register_instance(
        self, instance_id: str, tenant_id: str, checkpoint_id: str | None
    ) -> Deferred[Registration]:
        return self._write(
            "register_instance",
            _register_instance,
            instance_id,
            tenant_id,
            checkpoint_id,
            self._now_ms(),
        )

    def save_checkpoint(
        self, instance_id: str, tenant_id: str, checkpoint_id: str, state: bytes
    ) -> Deferred[CheckpointResult]:
        return self._write(
            "save_checkpoint",
            _save_checkpoint,
            instance_id,
            tenant_id,
            checkpoint_id,
            bytes(state),
            self._now_ms(),
        )

    def get_checkpoint(
        self, instance_id: str, tenant_id: str | None, checkpoint_id: str
    ) -> Deferred[bytes | None]:
        return self._read("get_checkpoint", _get_checkpoint, instance_id, tenant_id, checkpoint_id)

    def begin_sleep(
        self,
        instance_id: str,
        tenant_id: str,
        checkpoint_id: str,
        state: bytes,
        duration_ms: int,
    ) -> Deferred[SleepPlan]:
        return self._write(
            "begin_sleep",
            _begin_sleep,
            instance_id,
            tenant_id,
            checkpoint_id,
            bytes(state),
            duration_ms,
            self._now_ms(),
        )

    def finish_sleep(self, instance_id: str, checkpoint_id: str) -> Deferred[Status]:
        """See ``IPersistence``; an instance that no longer exists gives ``Status.UNKNOWN``."""
        return self._write(
            "finish_sleep", _finish_sleep, instance_id, checkpoint_id, self._now_ms()
        )

    def record_event(self, instance_id: str, tenant_id: str, event: Event) -> Deferred[None]:
        return self._write(
            "record_event", _record_event, instance_id, tenant_id, event, self._now_ms()
        )

    def get_instance_status(
        self, instance_id: str, tenant_id: str
    ) -> Deferred[InstanceRecord | None]:
        return self._read("get_instance_status", _get_instance_status, instance_id, tenant_id)

    def poll_signals(
        self, instance_id: str, tenant_id: str, checkpoint_id: str | None
    ) -> Deferred[Signals]:
        # Only a custom signal is consumed; without a checkpoint id nothing is written.
        run = self._read if checkpoint_id is None else self._write
        return run("poll_signals", _poll_signals, instance_id, tenant_id, checkpoint_id)

    def acknowledge_signal(
        self, instance_id: str, tenant_id: str, signal_type: SignalType, acknowledged: bool
    ) -> Deferred[AckResult]:
        return self._write(
            "acknowledge_signal",
            _acknowledge_signal,
            instance_id,
            tenant_id,
            SignalType(signal_type),
            acknowledged,
            self._now_ms(),
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
        return self._write(
            "record_retry_attempt",
            _record_retry_attempt,
            instance_id,
            tenant_id,
            checkpoint_id,
            attempt_number,
            timestamp_ms,
            error_message,
            self._now_ms(),
        )

    # -- management ---------------------------------------------------------

    def send_signal(
        self, instance_id: str, signal_type: SignalType, payload: bytes
    ) -> Deferred[None]:
        return self._write(
            "send_signal",
            _send_signal,
            instance_id,
            SignalType(signal_type),
            bytes(payload),
            self._now_ms(),
        )

    def send_custom_signal(
        self, instance_id: str, checkpoint_id: str, payload: bytes
    ) -> Deferred[None]:
        return self._write(
            "send_custom_signal",
            _send_custom_signal,
            instance_id,
            checkpoint_id,
            bytes(payload),
            self._now_ms(),
        )

    def create_instance(self, instance_id: str, tenant_id: str) -> Deferred[InstanceRecord]:
        return self._write(
            "create_instance", _create_instance, instance_id, tenant_id, self._now_ms()
        )

    def get_instance(self, instance_id: str) -> Deferred[InstanceDetails]:
        return self._read("get_instance", _get_instance, instance_id)

    def list_instances(
        self, tenant_id: str | None, status: Status | None, limit: int, offset: int
    ) -> Deferred[list[InstanceRecord]]:
        return self._read("list_instances", _list_instances, tenant_id, status, limit, offset)

    def count_instances(self, tenant_id: str | None, status: Status | None) -> Deferred[int]:
        return self._read("count_instances", _count_instances, tenant_id, status)

    def count_by_status(self) -> Deferred[dict[Status, int]]:
        return self._read("count_by_status", _count_by_status)

    def list_checkpoints(
        self, instance_id: str, limit: int, offset: int
    ) -> Deferred[list[CheckpointInfo]]:
        return self._read("list_checkpoints", _list_checkpoints, instance_id, limit, offset)

    def list_events(
        self,
        instance_id: str,
        event_type: EventType | None,
        subtype: str | None,
        limit: int,
        offset: int,
    ) -> Deferred[list[EventRecord]]:
        return self._read(
            "list_events", _list_events, instance_id, event_type, subtype, limit, offset
        )

    def count_purgeable(self, finished_before_ms: int) -> Deferred[int]:
        return self._read("count_purgeable", _count_purgeable, finished_before_ms)

    def purge_finished(self, finished_before_ms: int, limit: int) -> Deferred[int]:
        return self._write("purge_finished", _purge_finished, finished_before_ms, limit)

    # -- running transactions -----------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _write(self, operation: str, body: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return self._run(operation, _WRITE, body, *args)

    def _read(self, operation: str, body: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return self._run(operation, _READ, body, *args)

    def _run(
        self, operation: str, begin: str | None, function: Callable[..., _T], *args: Any
    ) -> Deferred[_T]:
        """Run ``function(connection, *args)`` in the pool thread as ``operation``.

        ``begin`` is the transaction it needs (``_WRITE``/``_READ``, group
        committed), or None for a function that manages its own transactions.
        """
        committer = self._committer
        if committer is None or committer.closing:
            return fail(DatabaseError(operation, "database is not open", retryable=False))
        ran = committer.submit(begin, function, args)
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


# -- transaction plumbing (run in the pool thread) ---------------------------


def _run_alone(db: _Db, function: Callable[..., _T], args: tuple[Any, ...]) -> list[_T]:
    """Run ``function(db, *args)`` (which manages its own transactions); one outcome."""
    return [function(db, *args)]


def _run_batch(
    db: _Db, begin: str, bodies: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[Any]:
    """Run ``bodies`` in one transaction; return each one's result or ``Failure``.

    Each body runs in its own savepoint (see ``_GroupCommitter``). Raises,
    after rolling everything back, if the transaction itself fails.
    """
    db.execute(begin)
    try:
        outcomes = [_in_savepoint(db, body, args) for body, args in bodies]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return outcomes


def _in_savepoint(db: _Db, body: Callable[..., _T], args: tuple[Any, ...]) -> _T | Failure:
    """``body(db, *args)``, or its exception as a ``Failure`` with its writes undone.

    Re-raises instead when the error ended the whole transaction (SQLite
    rolls back on its own after e.g. a full disk or an I/O error), since the
    batch's earlier operations are then gone too.
    """
    db.execute("SAVEPOINT operation")
    try:
        result = body(db, *args)
    except Exception:
        if not db.in_transaction:
            raise
        failure = Failure()
        db.execute("ROLLBACK TO operation")
        db.execute("RELEASE operation")
        return failure
    db.execute("RELEASE operation")
    return result


def _in_transaction(db: _Db, begin: str, body: Callable[..., _T], *args: Any) -> _T:
    """Run ``body(db, *args)`` in one transaction: commit, or roll back and re-raise."""
    db.execute(begin)
    try:
        result = body(db, *args)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def _probe(db: _Db) -> None:
    db.execute("SELECT 1").fetchall()


def _connection_settings(db: _Db) -> dict[str, object]:
    settings: dict[str, object] = {}
    for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
        settings[pragma] = db.execute(f"PRAGMA {pragma}").fetchone()[0]
    return settings


# -- migrations ------------------------------------------------------------------


def _migrate(db: _Db, migrations: list[Migration], now_ms: int) -> tuple[int, list[Migration]]:
    """Apply pending migrations one transaction each; return (version, applied)."""
    db.execute(_LEDGER_DDL)
    applied = []
    while True:
        version, migration = _in_transaction(db, _WRITE, _apply_next_migration, migrations, now_ms)
        if migration is None:
            return version, applied
        applied.append(migration)


def _apply_next_migration(
    db: _Db, migrations: list[Migration], now_ms: int
) -> tuple[int, Migration | None]:
    """Apply the first pending migration with its ledger row, if any is pending.

    The ledger is read inside the same transaction, so two processes
    migrating at once never apply one file twice.
    """
    version = _applied_version(db)
    pending = pending_migrations(migrations, version)
    if not pending:
        return version, None
    migration = pending[0]
    for statement in _split_statements(migration.sql):
        db.execute(statement)
    db.execute(
        f"INSERT INTO {LEDGER_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, now_ms),
    )
    return migration.version, migration


def _split_statements(script: str) -> list[str]:
    """The statements of ``script``, cut at the semicolons that complete one.

    ``sqlite3.complete_statement`` knows about strings, comments and trigger
    bodies, so a semicolon inside them does not cut. (``executescript`` is not
    used because it commits before it runs.)
    """
    statements = []
    start = 0
    for end, character in enumerate(script):
        if character == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statements.append(script[start : end + 1])
            start = end + 1
    if script[start:].strip():
        statements.append(script[start:])
    return statements


def _ledger_exists(db: _Db) -> bool:
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEDGER_TABLE,)
    ).fetchone()
    return row is not None


def _applied_version(db: _Db) -> int:
    row = db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {LEDGER_TABLE}").fetchone()
    return int(row[0])


def _schema_version(db: _Db) -> int:
    return _applied_version(db) if _ledger_exists(db) else 0


# -- rows and shared steps ---------------------------------------------------------


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
        output=None if output is None else bytes(output),
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
        payload=bytes(payload),
        client_ts_ms=client_ts,
        created_at_ms=created,
    )


def _find_instance(db: _Db, instance_id: str) -> InstanceRecord | None:
    row = db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    return None if row is None else _instance_from_row(row)


def _existing_instance(db: _Db, instance_id: str, tenant_id: str | None = None) -> InstanceRecord:
    """The instance as ``tenant_id`` may see it (None: any tenant), else ``InstanceNotFound``."""
    instance = _find_instance(db, instance_id)
    if instance is None or (tenant_id is not None and instance.tenant_id != tenant_id):
        raise InstanceNotFound(instance_id)
    return instance


def _require_running(instance: InstanceRecord) -> None:
    if instance.status is not Status.RUNNING:
        raise InvalidInstanceState(instance.instance_id, "running", instance.status.value)


def _require_non_terminal(instance: InstanceRecord) -> None:
    if instance.status.is_terminal:
        raise InvalidInstanceState(instance.instance_id, "non-terminal", instance.status.value)


def _set_status(db: _Db, instance_id: str, status: Status) -> None:
    db.execute("UPDATE instances SET status = ? WHERE instance_id = ?", (status.value, instance_id))


def _insert_event(
    db: _Db,
    instance_id: str,
    event_type: EventType,
    now_ms: int,
    *,
    checkpoint_id: str | None = None,
    payload: bytes = b"",
    subtype: str | None = None,
    client_ts_ms: int | None = None,
) -> None:
    db.execute(
        "INSERT INTO events"
        " (instance_id, event_type, subtype, checkpoint_id, payload, client_ts, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            instance_id,
            EventType(event_type).value,
            subtype,
            checkpoint_id,
            bytes(payload),
            client_ts_ms,
            now_ms,
        ),
    )


def _has_checkpoint(db: _Db, instance_id: str, checkpoint_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM checkpoints WHERE instance_id = ? AND checkpoint_id = ?",
        (instance_id, checkpoint_id),
    ).fetchone()
    return row is not None


def _has_any_checkpoint(db: _Db, instance_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM checkpoints WHERE instance_id = ? LIMIT 1", (instance_id,)
    ).fetchone()
    return row is not None


def _stored_state(db: _Db, instance_id: str, checkpoint_id: str) -> bytes | None:
    row = db.execute(
        "SELECT state FROM checkpoints WHERE instance_id = ? AND checkpoint_id = ?",
        (instance_id, checkpoint_id),
    ).fetchone()
    return None if row is None else bytes(row[0])


def _store_checkpoint(
    db: _Db, instance_id: str, checkpoint_id: str, state: bytes, now_ms: int
) -> None:
    """Store a new checkpoint and make it the instance's current one."""
    db.execute(
        "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at)"
        " VALUES (?, ?, ?, ?)",
        (instance_id, checkpoint_id, state, now_ms),
    )
    db.execute(
        "UPDATE instances SET checkpoint_id = ? WHERE instance_id = ?",
        (checkpoint_id, instance_id),
    )


def _pending_signal(db: _Db, instance_id: str) -> PendingSignal | None:
    row = db.execute(
        "SELECT signal_type, payload FROM signals"
        " WHERE instance_id = ? AND acknowledged_at IS NULL",
        (instance_id,),
    ).fetchone()
    return None if row is None else PendingSignal(SignalType(row[0]), bytes(row[1]))


def _take_custom_signal(db: _Db, instance_id: str, checkpoint_id: str) -> CustomSignal | None:
    """Delete and return the custom signal pending for (id, cp), if any."""
    rows = db.execute(
        "DELETE FROM custom_signals WHERE instance_id = ? AND checkpoint_id = ? RETURNING payload",
        (instance_id, checkpoint_id),
    ).fetchall()
    return CustomSignal(checkpoint_id, bytes(rows[0][0])) if rows else None


def _count(db: _Db, sql: str, parameters: Sequence[Any]) -> int:
    return int(db.execute(sql, parameters).fetchone()[0])


# -- the instance protocol -------------------------------------------------------


def _register_instance(
    db: _Db, instance_id: str, tenant_id: str, checkpoint_id: str | None, now_ms: int
) -> Registration:
    instance = _find_instance(db, instance_id)
    if instance is None:
        return _register_new_instance(db, instance_id, tenant_id, checkpoint_id, now_ms)
    if instance.tenant_id != tenant_id:
        return _refusal(Status.UNKNOWN, InstanceNotFound(instance_id).message)
    if instance.status.is_terminal:
        return _refusal(
            instance.status, f"Instance '{instance_id}' is already {instance.status.value}"
        )
    if checkpoint_id is not None and not _has_checkpoint(db, instance_id, checkpoint_id):
        return _refusal(instance.status, CheckpointNotFound(instance_id, checkpoint_id).message)
    resumed = _has_any_checkpoint(db, instance_id)
    db.execute(
        "UPDATE instances SET status = ?, started_at = ? WHERE instance_id = ?",
        (Status.RUNNING.value, now_ms, instance_id),
    )
    _insert_event(db, instance_id, EventType.STARTED, now_ms, checkpoint_id=checkpoint_id)
    return Registration(success=True, status=Status.RUNNING, resumed=resumed)


def _register_new_instance(
    db: _Db, instance_id: str, tenant_id: str, checkpoint_id: str | None, now_ms: int
) -> Registration:
    if checkpoint_id is not None:
        return _refusal(Status.UNKNOWN, CheckpointNotFound(instance_id, checkpoint_id).message)
    db.execute(
        "INSERT INTO instances (instance_id, tenant_id, status, created_at, started_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (instance_id, tenant_id, Status.RUNNING.value, now_ms, now_ms),
    )
    _insert_event(db, instance_id, EventType.STARTED, now_ms)
    return Registration(success=True, status=Status.RUNNING, resumed=False)


def _refusal(status: Status, error: str) -> Registration:
    return Registration(success=False, status=status, resumed=False, error=error)


def _save_checkpoint(
    db: _Db, instance_id: str, tenant_id: str, checkpoint_id: str, state: bytes, now_ms: int
) -> CheckpointResult:
    _require_running(_existing_instance(db, instance_id, tenant_id))
    stored = _stored_state(db, instance_id, checkpoint_id)
    if stored is None:
        _store_checkpoint(db, instance_id, checkpoint_id, state, now_ms)
    return CheckpointResult(
        found=stored is not None,
        state=b"" if stored is None else stored,
        pending_signal=_pending_signal(db, instance_id),
        custom_signal=_take_custom_signal(db, instance_id, checkpoint_id),
    )


def _get_checkpoint(
    db: _Db, instance_id: str, tenant_id: str | None, checkpoint_id: str
) -> bytes | None:
    _existing_instance(db, instance_id, tenant_id)
    return _stored_state(db, instance_id, checkpoint_id)


def _begin_sleep(
    db: _Db,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str,
    state: bytes,
    duration_ms: int,
    now_ms: int,
) -> SleepPlan:
    instance = _existing_instance(db, instance_id, tenant_id)
    _require_running(instance)
    if not _has_checkpoint(db, instance_id, checkpoint_id):
        wake_at_ms = now_ms + duration_ms
        _store_checkpoint(db, instance_id, checkpoint_id, state, now_ms)
        db.execute(
            "UPDATE instances SET status = ?, sleep_until = ? WHERE instance_id = ?",
            (Status.SUSPENDED.value, wake_at_ms, instance_id),
        )
        _insert_event(db, instance_id, EventType.SLEEP, now_ms, checkpoint_id=checkpoint_id)
        return SleepPlan(wake_at_ms)
    if instance.sleep_until_ms is None:
        return SleepPlan(None)
    _set_status(db, instance_id, Status.SUSPENDED)
    return SleepPlan(instance.sleep_until_ms)


def _finish_sleep(db: _Db, instance_id: str, checkpoint_id: str, now_ms: int) -> Status:
    instance = _find_instance(db, instance_id)
    if instance is None:
        return Status.UNKNOWN
    if instance.status is not Status.SUSPENDED or instance.sleep_until_ms is None:
        return instance.status
    db.execute(
        "UPDATE instances SET status = ?, sleep_until = NULL WHERE instance_id = ?",
        (Status.RUNNING.value, instance_id),
    )
    _insert_event(db, instance_id, EventType.WAKE, now_ms, checkpoint_id=checkpoint_id)
    return Status.RUNNING


def _record_event(db: _Db, instance_id: str, tenant_id: str, event: Event, now_ms: int) -> None:
    instance = _existing_instance(db, instance_id, tenant_id)
    event_type = EventType(event.event_type)
    if event_type not in _ACCEPTED_WHEN_TERMINAL:
        _require_non_terminal(instance)
    _insert_event(
        db,
        instance_id,
        event_type,
        now_ms,
        checkpoint_id=event.checkpoint_id,
        payload=event.payload,
        subtype=event.subtype,
        client_ts_ms=event.timestamp_ms,
    )
    if event_type is EventType.COMPLETED:
        db.execute(
            "UPDATE instances SET status = ?, finished_at = ?, output = ? WHERE instance_id = ?",
            (Status.COMPLETED.value, now_ms, bytes(event.payload), instance_id),
        )
    elif event_type is EventType.FAILED:
        db.execute(
            "UPDATE instances SET status = ?, finished_at = ?, error = ? WHERE instance_id = ?",
            (Status.FAILED.value, now_ms, _error_text(event.payload), instance_id),
        )
    elif event_type is EventType.SUSPENDED:
        _set_status(db, instance_id, Status.SUSPENDED)


def _error_text(payload: bytes) -> str:
    """A failed event's payload as the instance's error text (PROTOCOL.md 6.5)."""
    if not payload:
        return "Unknown error"
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return "Unknown error (binary payload)"


def _get_instance_status(db: _Db, instance_id: str, tenant_id: str) -> InstanceRecord | None:
    instance = _find_instance(db, instance_id)
    if instance is None or instance.tenant_id != tenant_id:
        return None
    return instance


def _poll_signals(db: _Db, instance_id: str, tenant_id: str, checkpoint_id: str | None) -> Signals:
    _existing_instance(db, instance_id, tenant_id)
    custom = None if checkpoint_id is None else _take_custom_signal(db, instance_id, checkpoint_id)
    return Signals(signal=_pending_signal(db, instance_id), custom_signal=custom)


def _acknowledge_signal(
    db: _Db,
    instance_id: str,
    tenant_id: str,
    signal_type: SignalType,
    acknowledged: bool,
    now_ms: int,
) -> AckResult:
    instance = _existing_instance(db, instance_id, tenant_id)
    pending = _pending_signal(db, instance_id)
    if not acknowledged or pending is None or pending.signal_type is not signal_type:
        return AckResult(success=False, status=instance.status)
    db.execute(
        "UPDATE signals SET acknowledged_at = ? WHERE instance_id = ?", (now_ms, instance_id)
    )
    return AckResult(success=True, status=_apply_signal(db, instance, signal_type, now_ms))


def _apply_signal(
    db: _Db, instance: InstanceRecord, signal_type: SignalType, now_ms: int
) -> Status:
    """Change the status an acknowledged signal asks for; return the status after."""
    if instance.status.is_terminal:
        return instance.status
    if signal_type is SignalType.CANCEL:
        db.execute(
            "UPDATE instances SET status = ?, finished_at = ? WHERE instance_id = ?",
            (Status.CANCELLED.value, now_ms, instance.instance_id),
        )
        return Status.CANCELLED
    if signal_type is SignalType.PAUSE:
        _set_status(db, instance.instance_id, Status.SUSPENDED)
        return Status.SUSPENDED
    if instance.status is Status.SUSPENDED and instance.sleep_until_ms is None:
        _set_status(db, instance.instance_id, Status.RUNNING)
        return Status.RUNNING
    return instance.status


def _record_retry_attempt(
    db: _Db,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str,
    attempt_number: int,
    timestamp_ms: int | None,
    error_message: str | None,
    now_ms: int,
) -> None:
    _existing_instance(db, instance_id, tenant_id)
    db.execute(
        "INSERT INTO retry_attempts"
        " (instance_id, checkpoint_id, attempt_number, client_ts, error_message, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (instance_id, checkpoint_id, attempt_number) DO NOTHING",
        (instance_id, checkpoint_id, attempt_number, timestamp_ms, error_message, now_ms),
    )


# -- management ---------------------------------------------------------------------


def _send_signal(
    db: _Db, instance_id: str, signal_type: SignalType, payload: bytes, now_ms: int
) -> None:
    _require_non_terminal(_existing_instance(db, instance_id))
    db.execute(
        "INSERT INTO signals (instance_id, signal_type, payload, created_at, acknowledged_at)"
        " VALUES (?, ?, ?, ?, NULL)"
        " ON CONFLICT (instance_id) DO UPDATE SET signal_type = excluded.signal_type,"
        " payload = excluded.payload, created_at = excluded.created_at, acknowledged_at = NULL",
        (instance_id, signal_type.value, payload, now_ms),
    )


def _send_custom_signal(
    db: _Db, instance_id: str, checkpoint_id: str, payload: bytes, now_ms: int
) -> None:
    _existing_instance(db, instance_id)
    db.execute(
        "INSERT INTO custom_signals (instance_id, checkpoint_id, payload, created_at)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (instance_id, checkpoint_id) DO UPDATE SET"
        " payload = excluded.payload, created_at = excluded.created_at",
        (instance_id, checkpoint_id, payload, now_ms),
    )


def _create_instance(db: _Db, instance_id: str, tenant_id: str, now_ms: int) -> InstanceRecord:
    inserted = db.execute(
        "INSERT INTO instances (instance_id, tenant_id, status, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (instance_id) DO NOTHING",
        (instance_id, tenant_id, Status.PENDING.value, now_ms),
    )
    if inserted.rowcount == 0:
        raise InstanceAlreadyExists(instance_id)
    return _existing_instance(db, instance_id)


def _get_instance(db: _Db, instance_id: str) -> InstanceDetails:
    instance = _existing_instance(db, instance_id)
    return InstanceDetails(
        instance=instance,
        pending_signal=_pending_signal(db, instance_id),
        checkpoint_count=_count(
            db, "SELECT COUNT(*) FROM checkpoints WHERE instance_id = ?", (instance_id,)
        ),
        event_count=_count(db, "SELECT COUNT(*) FROM events WHERE instance_id = ?", (instance_id,)),
    )


def _instance_filter(tenant_id: str | None, status: Status | None) -> tuple[str, list[Any]]:
    """A WHERE clause (possibly empty) and its parameters for instance listings."""
    conditions = []
    parameters: list[Any] = []
    if tenant_id is not None:
        conditions.append("tenant_id = ?")
        parameters.append(tenant_id)
    if status is not None:
        conditions.append("status = ?")
        parameters.append(Status(status).value)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return where, parameters


def _list_instances(
    db: _Db, tenant_id: str | None, status: Status | None, limit: int, offset: int
) -> list[InstanceRecord]:
    where, parameters = _instance_filter(tenant_id, status)
    rows = db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances{where}"
        " ORDER BY created_at DESC, instance_id DESC LIMIT ? OFFSET ?",
        (*parameters, limit, offset),
    ).fetchall()
    return [_instance_from_row(row) for row in rows]


def _count_instances(db: _Db, tenant_id: str | None, status: Status | None) -> int:
    where, parameters = _instance_filter(tenant_id, status)
    return _count(db, f"SELECT COUNT(*) FROM instances{where}", parameters)


def _count_by_status(db: _Db) -> dict[Status, int]:
    rows = db.execute("SELECT status, COUNT(*) FROM instances GROUP BY status").fetchall()
    return {Status(status): int(count) for status, count in rows}


def _list_checkpoints(db: _Db, instance_id: str, limit: int, offset: int) -> list[CheckpointInfo]:
    _existing_instance(db, instance_id)
    rows = db.execute(
        "SELECT checkpoint_id, length(state), created_at FROM checkpoints WHERE instance_id = ?"
        " ORDER BY created_at DESC, checkpoint_id DESC LIMIT ? OFFSET ?",
        (instance_id, limit, offset),
    ).fetchall()
    return [
        CheckpointInfo(checkpoint_id, int(size), created) for checkpoint_id, size, created in rows
    ]


def _list_events(
    db: _Db,
    instance_id: str,
    event_type: EventType | None,
    subtype: str | None,
    limit: int,
    offset: int,
) -> list[EventRecord]:
    _existing_instance(db, instance_id)
    conditions = ["instance_id = ?"]
    parameters: list[Any] = [instance_id]
    if event_type is not None:
        conditions.append("event_type = ?")
        parameters.append(EventType(event_type).value)
    if subtype is not None:
        conditions.append("subtype = ?")
        parameters.append(subtype)
    rows = db.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(conditions)}"
        " ORDER BY event_id DESC LIMIT ? OFFSET ?",
        (*parameters, limit, offset),
    ).fetchall()
    return [_event_from_row(row) for row in rows]


def _count_purgeable(db: _Db, finished_before_ms: int) -> int:
    return _count(
        db,
        f"SELECT COUNT(*) FROM instances WHERE {_PURGEABLE}",
        (*_TERMINAL_VALUES, finished_before_ms),
    )


def _purge_finished(db: _Db, finished_before_ms: int, limit: int) -> int:
    """Delete the oldest purgeable instances; their rows go by ON DELETE CASCADE."""
    deleted = db.execute(
        "DELETE FROM instances WHERE instance_id IN ("
        f" SELECT instance_id FROM instances WHERE {_PURGEABLE}"
        " ORDER BY finished_at, instance_id LIMIT ?)",
        (*_TERMINAL_VALUES, finished_before_ms, limit),
    )
    return deleted.rowcount
