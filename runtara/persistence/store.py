"""``Store``: ``IPersistence`` written once, over any database engine.

Every operation is a transaction *body* (see ``runtara.persistence.transaction``)
run by the engine in one transaction, through one chokepoint,
``Store._transact``. The status rules (recording events, applying signals,
beginning sleeps, refusing registrations) and their SQL exist here only; an
engine (``sqlite``, ``postgresql``) decides nothing, it only runs
transactions and turns its driver's failures into ``DatabaseError``.

Concurrency: a body whose decision depends on the instance (status, sleep,
pending signal) first reads the instance row with ``dialect.lock_row``, so on
PostgreSQL such operations on one instance run one after another in every
process (on SQLite a write transaction excludes every other writer). Rows
that may be created concurrently are inserted with ``ON CONFLICT DO
NOTHING`` and read back. Bodies touch only the database, so running one
again after a retryable failure is safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from runtara.errors import (
    CheckpointNotFound,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInstanceState,
)
from runtara.interfaces import IDatabaseEngine, IPersistence
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
    ReplayIndex,
    RetryAttempt,
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
from runtara.persistence.transaction import Body, Row, Transaction

if TYPE_CHECKING:
    from runtara.metrics import Metrics

_T = TypeVar("_T")

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
_INSTANCE_COLUMNS_OF_I = ", ".join(f"i.{field}" for field in _INSTANCE_FIELDS)

_EVENT_COLUMNS = (
    "event_id, instance_id, event_type, subtype, checkpoint_id, payload, client_ts, created_at"
)

_TERMINAL_VALUES = tuple(sorted(status.value for status in TERMINAL_STATUSES))
_PURGEABLE = (
    f"status IN ({', '.join('?' * len(_TERMINAL_VALUES))})"
    " AND finished_at IS NOT NULL AND finished_at < ?"
)

_ACCEPTED_WHEN_TERMINAL = frozenset({EventType.HEARTBEAT, EventType.CUSTOM})

MAX_REPLAY_INDEX = 10_000
"""At most this many checkpoint ids, and as many retried steps, in a replay index
(docs/protocol.md 8.4); an instance with more gets none and is replayed step by step."""


@implementer(IPersistence)
class Store:
    """``IPersistence`` over ``engine``; ``clock`` gives every operation its time.

    With ``metrics``, every transaction's duration is observed (by operation).
    """

    _log = Logger()

    def __init__(
        self, engine: IDatabaseEngine, clock: IReactorTime, metrics: Metrics | None = None
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._metrics = metrics

    @property
    def dialect(self) -> str:
        """The engine's dialect name (``sqlite`` or ``postgresql``)."""
        return str(self.engine.dialect.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.engine.description}>"

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Open the engine and prove it works with a first query; close it if that fails."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        await self.engine.start()
        try:
            await self._read("start", probe)
        except BaseException:
            await self.engine.close()
            raise

    def migrate(self) -> Deferred[int]:
        return Deferred.fromCoroutine(self._migrate(load_migrations(self.dialect)))

    async def _migrate(self, migrations: list[Migration]) -> int:
        while True:
            version, applied = await self._write("migrate", _apply_next_migration, migrations)
            if applied is None:
                return version
            self._log.info(
                "applied migration {version} ({name}) to {database}",
                version=applied.version,
                name=applied.name,
                database=self.engine.description,
            )

    def schema_version(self) -> Deferred[int]:
        return self._read("schema_version", _schema_version)

    def close(self) -> Deferred[None]:
        return self.engine.close()

    def check_health(self) -> Deferred[bool]:
        probed = self._read("check_health", probe)
        probed.addCallbacks(lambda _: True, lambda _: False)
        return probed

    # -- the instance protocol -------------------------------------------------------

    def register_instance(
        self,
        instance_id: str,
        tenant_id: str,
        checkpoint_id: str | None,
        run_id: str | None = None,
        replay_index: bool = False,
    ) -> Deferred[Registration]:
        return self._write(
            "register_instance",
            _register_instance,
            instance_id,
            tenant_id,
            checkpoint_id,
            run_id,
            MAX_REPLAY_INDEX if replay_index else None,
        )

    def save_checkpoint(
        self,
        instance_id: str,
        tenant_id: str,
        checkpoint_id: str,
        state: bytes,
        received: CustomSignal | None = None,
    ) -> Deferred[CheckpointResult]:
        return self._write(
            "save_checkpoint",
            _save_checkpoint,
            instance_id,
            tenant_id,
            checkpoint_id,
            bytes(state),
            received,
        )

    def get_checkpoint(
        self, instance_id: str, tenant_id: str | None, checkpoint_id: str
    ) -> Deferred[bytes | None]:
        return self._read("get_checkpoint", _get_checkpoint, instance_id, tenant_id, checkpoint_id)

    def replay_checkpoint(
        self, instance_id: str, tenant_id: str, checkpoint_id: str
    ) -> Deferred[CheckpointResult]:
        return self._read(
            "replay_checkpoint", _replay_checkpoint, instance_id, tenant_id, checkpoint_id
        )

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
        )

    def finish_sleep(self, instance_id: str, checkpoint_id: str) -> Deferred[Status]:
        """See ``IPersistence``; an instance that no longer exists gives ``Status.UNKNOWN``."""
        return self._write("finish_sleep", _finish_sleep, instance_id, checkpoint_id)

    def record_event(self, instance_id: str, tenant_id: str, event: Event) -> Deferred[None]:
        return self._write("record_event", _record_event, instance_id, tenant_id, event)

    def get_instance_status(
        self, instance_id: str, tenant_id: str
    ) -> Deferred[InstanceRecord | None]:
        return self._read("get_instance_status", _get_instance_status, instance_id, tenant_id)

    def poll_signals(
        self, instance_id: str, tenant_id: str, checkpoint_id: str | None, peek: bool = False
    ) -> Deferred[Signals]:
        # Only a custom signal is consumed: a peek or a poll without a checkpoint writes nothing.
        run = self._read if checkpoint_id is None or peek else self._write
        return run("poll_signals", _poll_signals, instance_id, tenant_id, checkpoint_id, peek)

    def acknowledge_signal(
        self,
        instance_id: str,
        tenant_id: str,
        signal_type: SignalType,
        acknowledged: bool,
        idempotent: bool = False,
    ) -> Deferred[AckResult]:
        return self._write(
            "acknowledge_signal",
            _acknowledge_signal,
            instance_id,
            tenant_id,
            SignalType(signal_type),
            acknowledged,
            idempotent,
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
        )

    # -- management ----------------------------------------------------------------------

    def send_signal(
        self, instance_id: str, signal_type: SignalType, payload: bytes
    ) -> Deferred[None]:
        return self._write(
            "send_signal", _send_signal, instance_id, SignalType(signal_type), bytes(payload)
        )

    def send_custom_signal(
        self, instance_id: str, checkpoint_id: str, payload: bytes
    ) -> Deferred[None]:
        return self._write(
            "send_custom_signal", _send_custom_signal, instance_id, checkpoint_id, bytes(payload)
        )

    def create_instance(self, instance_id: str, tenant_id: str) -> Deferred[InstanceRecord]:
        return self._write("create_instance", _create_instance, instance_id, tenant_id)

    def get_instance(self, instance_id: str) -> Deferred[InstanceDetails]:
        return self._read("get_instance", _get_instance, instance_id)

    def list_instances(
        self, tenant_id: str | None, status: Status | None, limit: int, offset: int
    ) -> Deferred[list[InstanceRecord]]:
        return self._read("list_instances", _list_instances, tenant_id, status, limit, offset)

    def count_instances(self, tenant_id: str | None, status: Status | None) -> Deferred[int]:
        return self._read("count_instances", _count_instances, tenant_id, status)

    def list_instances_after(
        self,
        tenant_id: str | None,
        status: Status | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> Deferred[list[InstanceRecord]]:
        return self._read(
            "list_instances_after", _list_instances_after, tenant_id, status, after, limit
        )

    def count_by_status(self, tenant_id: str | None = None) -> Deferred[dict[Status, int]]:
        return self._read("count_by_status", _count_by_status, tenant_id)

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

    # -- the chokepoint --------------------------------------------------------------------

    def _write(self, operation: str, body: Body[_T], *args: Any) -> Deferred[_T]:
        return self._transact(operation, True, body, args)

    def _read(self, operation: str, body: Body[_T], *args: Any) -> Deferred[_T]:
        return self._transact(operation, False, body, args)

    def _transact(
        self, operation: str, writes: bool, body: Body[_T], args: tuple[Any, ...]
    ) -> Deferred[_T]:
        """Run ``body(tx, *args)`` as ``operation`` in one transaction of the engine.

        Every operation of every engine passes here, once.
        """
        now_ms = int(self._clock.seconds() * 1000)
        transaction = self.engine.transact(operation, writes, body, args, now_ms)
        if self._metrics is None:
            return transaction
        return self._metrics.time_transaction(operation, transaction)


# -- migrations ------------------------------------------------------------------------------


async def probe(tx: Transaction) -> None:
    """The cheapest query: proves the connection works."""
    await tx.rows("SELECT 1")


async def _apply_next_migration(
    tx: Transaction, migrations: list[Migration]
) -> tuple[int, Migration | None]:
    """Apply the first pending migration with its ledger row, if any is pending.

    The ledger is read inside the transaction that applies the file, after
    the dialect's migration lock, so a second process migrating at the same
    time waits, then reads the ledger this one wrote and never applies a file
    twice.
    """
    if tx.dialect.lift_timeouts is not None:
        tx.write(tx.dialect.lift_timeouts)
    if tx.dialect.migration_lock is not None:
        await tx.rows(tx.dialect.migration_lock)
    tx.write(
        f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (version INTEGER PRIMARY KEY,"
        f" name TEXT NOT NULL, applied_at {tx.dialect.big_integer} NOT NULL)"
    )
    version = await _applied_version(tx)
    pending = pending_migrations(migrations, version)
    if not pending:
        return version, None
    migration = pending[0]
    await tx.script(migration.sql)
    tx.write(
        f"INSERT INTO {LEDGER_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, tx.now_ms),
    )
    return migration.version, migration


async def _applied_version(tx: Transaction) -> int:
    return await _count(tx, f"SELECT COALESCE(MAX(version), 0) FROM {LEDGER_TABLE}", ())


async def _schema_version(tx: Transaction) -> int:
    if await tx.row(tx.dialect.ledger_exists, (LEDGER_TABLE,)) is None:
        return 0
    return await _applied_version(tx)


# -- rows and shared steps -----------------------------------------------------------------


def _instance_from_row(row: Row) -> InstanceRecord:
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


def _event_from_row(row: Row) -> EventRecord:
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
    tx: Transaction, instance_id: str, *, lock: bool = False
) -> InstanceRecord | None:
    """The instance row; ``lock`` holds it (``dialect.lock_row``) until the transaction ends."""
    row = await tx.row(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"
        + (tx.dialect.lock_row if lock else ""),
        (instance_id,),
    )
    return None if row is None else _instance_from_row(row)


async def _existing_instance(
    tx: Transaction, instance_id: str, tenant_id: str | None = None, *, lock: bool = False
) -> InstanceRecord:
    """The instance as ``tenant_id`` may see it (None: any tenant), else ``InstanceNotFound``."""
    instance = await _find_instance(tx, instance_id, lock=lock)
    if instance is None or (tenant_id is not None and instance.tenant_id != tenant_id):
        raise InstanceNotFound(instance_id)
    return instance


def _lock_instance(tx: Transaction, instance_id: str) -> None:
    """Hold the instance row until the transaction ends, where the dialect locks rows.

    A separate statement, so that the reads after it take their snapshot once
    the lock is held and see what the previous holder committed.
    """
    if tx.dialect.lock_row:
        tx.write(
            f"SELECT 1 FROM instances WHERE instance_id = ?{tx.dialect.lock_row}", (instance_id,)
        )


def _require_running(instance: InstanceRecord) -> None:
    if instance.status is not Status.RUNNING:
        raise InvalidInstanceState(instance.instance_id, "running", instance.status.value)


def _require_non_terminal(instance: InstanceRecord) -> None:
    if instance.status.is_terminal:
        raise InvalidInstanceState(instance.instance_id, "non-terminal", instance.status.value)


def _set_status(tx: Transaction, instance_id: str, status: Status) -> None:
    tx.write("UPDATE instances SET status = ? WHERE instance_id = ?", (status.value, instance_id))


def _insert_event(
    tx: Transaction,
    instance_id: str,
    event_type: EventType,
    *,
    checkpoint_id: str | None = None,
    payload: bytes = b"",
    subtype: str | None = None,
    client_ts_ms: int | None = None,
) -> None:
    tx.write(
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
            tx.now_ms,
        ),
    )


async def _stored_state(tx: Transaction, instance_id: str, checkpoint_id: str) -> bytes | None:
    row = await tx.row(
        "SELECT state FROM checkpoints WHERE instance_id = ? AND checkpoint_id = ?",
        (instance_id, checkpoint_id),
    )
    return None if row is None else bytes(row[0])


async def _store_checkpoint(
    tx: Transaction, instance_id: str, checkpoint_id: str, state: bytes
) -> bytes | None:
    """Store a first checkpoint and make it current; if one exists, return its state.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key to
    commit or roll back, so of two concurrent first saves exactly one stores
    and the other reads the winner's state back.
    """
    inserted = await tx.row(
        "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (instance_id, checkpoint_id) DO NOTHING RETURNING 1",
        (instance_id, checkpoint_id, state, tx.now_ms),
    )
    if inserted is None:
        return await _stored_state(tx, instance_id, checkpoint_id)
    _make_current(tx, instance_id, checkpoint_id)
    return None


def _write_checkpoint(tx: Transaction, instance_id: str, checkpoint_id: str, state: bytes) -> None:
    """Store a checkpoint known to be new (read under the instance's lock) and make it current."""
    tx.write(
        "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at)"
        " VALUES (?, ?, ?, ?)",
        (instance_id, checkpoint_id, state, tx.now_ms),
    )
    _make_current(tx, instance_id, checkpoint_id)


def _make_current(tx: Transaction, instance_id: str, checkpoint_id: str) -> None:
    tx.write(
        "UPDATE instances SET checkpoint_id = ? WHERE instance_id = ?",
        (checkpoint_id, instance_id),
    )


async def _pending_signal(tx: Transaction, instance_id: str) -> PendingSignal | None:
    row = await tx.row(
        "SELECT signal_type, payload FROM signals"
        " WHERE instance_id = ? AND acknowledged_at IS NULL",
        (instance_id,),
    )
    return None if row is None else PendingSignal(SignalType(row[0]), row[1])


async def _take_custom_signal(
    tx: Transaction, instance_id: str, checkpoint_id: str
) -> CustomSignal | None:
    """Delete and return the custom signal pending for (id, cp), if any."""
    row = await tx.row(
        "DELETE FROM custom_signals WHERE instance_id = ? AND checkpoint_id = ? RETURNING payload",
        (instance_id, checkpoint_id),
    )
    return None if row is None else CustomSignal(checkpoint_id, row[0])


async def _count(tx: Transaction, sql: str, parameters: Sequence[Any]) -> int:
    row = await tx.row(sql, parameters)
    assert row is not None
    return int(row[0])


# -- the instance protocol -----------------------------------------------------------------


async def _register_instance(
    tx: Transaction,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str | None,
    run_id: str | None,
    index_limit: int | None,
) -> Registration:
    """Register; with ``index_limit`` (not None) a successful answer carries the replay
    index when it has at most that many checkpoint ids and as many retried ones."""
    facts = await _registration_facts(tx, instance_id, checkpoint_id)
    if facts is None:
        if checkpoint_id is not None:
            return _refusal(Status.UNKNOWN, CheckpointNotFound(instance_id, checkpoint_id).message)
        if await _insert_running_instance(tx, instance_id, tenant_id, run_id):
            _insert_event(tx, instance_id, EventType.STARTED)
            empty = None if index_limit is None else ReplayIndex(frozenset(), {})
            return Registration(
                success=True, status=Status.RUNNING, resumed=False, replay_index=empty
            )
        # Another process created it since our SELECT: register the existing one.
        facts = await _registration_facts(tx, instance_id, checkpoint_id)
        if facts is None:
            raise InstanceNotFound(instance_id)
    instance, has_checkpoint, resumed, started_by = facts
    if instance.tenant_id != tenant_id:
        return _refusal(Status.UNKNOWN, InstanceNotFound(instance_id).message)
    if instance.status.is_terminal:
        return _refusal(
            instance.status, f"Instance '{instance_id}' is already {instance.status.value}"
        )
    if checkpoint_id is not None and not has_checkpoint:
        return _refusal(instance.status, CheckpointNotFound(instance_id, checkpoint_id).message)
    if run_id is not None and started_by == run_id:
        # This run registers again (after a lost answer or connection): not a new start.
        if instance.status is not Status.RUNNING:
            _set_status(tx, instance_id, Status.RUNNING)
    else:
        tx.write(
            "UPDATE instances SET status = ?, started_at = ?, run_id = ? WHERE instance_id = ?",
            (Status.RUNNING.value, tx.now_ms, run_id, instance_id),
        )
        _insert_event(tx, instance_id, EventType.STARTED, checkpoint_id=checkpoint_id)
    index = None if index_limit is None else await _replay_index(tx, instance_id, index_limit)
    return Registration(success=True, status=Status.RUNNING, resumed=resumed, replay_index=index)


async def _replay_index(tx: Transaction, instance_id: str, limit: int) -> ReplayIndex | None:
    """The instance's replay index, or None when a part of it exceeds ``limit`` entries."""
    rows = await tx.rows(
        "SELECT checkpoint_id FROM checkpoints WHERE instance_id = ? LIMIT ?",
        (instance_id, limit + 1),
    )
    if len(rows) > limit:
        return None
    retries = await _unfinished_retries(tx, instance_id, limit)
    if retries is None:
        return None
    return ReplayIndex(frozenset(row[0] for row in rows), retries)


async def _unfinished_retries(
    tx: Transaction, instance_id: str, limit: int
) -> dict[str, RetryAttempt] | None:
    """The last failed attempt of every checkpoint id without a stored checkpoint;
    None when there are more than ``limit`` of them."""
    rows = await tx.rows(
        "SELECT r.checkpoint_id, r.attempt_number, r.error_message FROM retry_attempts r"
        " WHERE r.instance_id = ?"
        " AND r.attempt_number = (SELECT MAX(m.attempt_number) FROM retry_attempts m"
        "  WHERE m.instance_id = r.instance_id AND m.checkpoint_id = r.checkpoint_id)"
        " AND NOT EXISTS (SELECT 1 FROM checkpoints c"
        "  WHERE c.instance_id = r.instance_id AND c.checkpoint_id = r.checkpoint_id)"
        " LIMIT ?",
        (instance_id, limit + 1),
    )
    if len(rows) > limit:
        return None
    return {checkpoint_id: RetryAttempt(number, message) for checkpoint_id, number, message in rows}


async def _registration_facts(
    tx: Transaction, instance_id: str, checkpoint_id: str | None
) -> tuple[InstanceRecord, bool, bool, str | None] | None:
    """The locked instance, whether it has ``checkpoint_id``, whether it has any checkpoint,
    and the run id of the registration that started it last (None: no run id)."""
    _lock_instance(tx, instance_id)
    row = await tx.row(
        f"SELECT {_INSTANCE_COLUMNS_OF_I},"
        " EXISTS (SELECT 1 FROM checkpoints c"
        "  WHERE c.instance_id = i.instance_id AND c.checkpoint_id = ?),"
        " EXISTS (SELECT 1 FROM checkpoints c WHERE c.instance_id = i.instance_id),"
        " i.run_id"
        " FROM instances i WHERE i.instance_id = ?",
        (checkpoint_id, instance_id),
    )
    if row is None:
        return None
    width = len(_INSTANCE_FIELDS)
    has_checkpoint, resumed, started_by = row[width:]
    return _instance_from_row(row[:width]), bool(has_checkpoint), bool(resumed), started_by


async def _insert_running_instance(
    tx: Transaction, instance_id: str, tenant_id: str, run_id: str | None
) -> bool:
    """Create the instance ``running``; False when the id exists (a concurrent create)."""
    inserted = await tx.row(
        "INSERT INTO instances (instance_id, tenant_id, status, created_at, started_at, run_id)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (instance_id) DO NOTHING RETURNING 1",
        (instance_id, tenant_id, Status.RUNNING.value, tx.now_ms, tx.now_ms, run_id),
    )
    return inserted is not None


def _refusal(status: Status, error: str) -> Registration:
    return Registration(success=False, status=status, resumed=False, error=error)


async def _save_checkpoint(
    tx: Transaction,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str,
    state: bytes,
    received: CustomSignal | None,
) -> CheckpointResult:
    _lock_instance(tx, instance_id)
    row = await tx.row(
        "SELECT i.tenant_id, i.status, c.state, s.signal_type, s.payload, cs.payload IS NOT NULL"
        " FROM instances i"
        " LEFT JOIN checkpoints c ON c.instance_id = i.instance_id AND c.checkpoint_id = ?"
        " LEFT JOIN signals s ON s.instance_id = i.instance_id AND s.acknowledged_at IS NULL"
        " LEFT JOIN custom_signals cs"
        "  ON cs.instance_id = i.instance_id AND cs.checkpoint_id = ?"
        " WHERE i.instance_id = ?",
        (checkpoint_id, checkpoint_id, instance_id),
    )
    if row is None or row[0] != tenant_id:
        raise InstanceNotFound(instance_id)
    _, status, stored, signal_type, signal_payload, has_custom_signal = row
    if status != Status.RUNNING.value:
        raise InvalidInstanceState(instance_id, Status.RUNNING.value, status)
    if stored is None:
        _write_checkpoint(tx, instance_id, checkpoint_id, state)
        if received is not None and received.signal_id is not None:
            # The state holds what the client received: consume exactly that payload.
            tx.write(
                "DELETE FROM custom_signals"
                " WHERE instance_id = ? AND checkpoint_id = ? AND signal_id = ?",
                (instance_id, received.checkpoint_id, received.signal_id),
            )
    pending = (
        None if signal_type is None else PendingSignal(SignalType(signal_type), signal_payload)
    )
    custom = (
        await _take_custom_signal(tx, instance_id, checkpoint_id) if has_custom_signal else None
    )
    return CheckpointResult(
        found=stored is not None,
        state=b"" if stored is None else stored,
        pending_signal=pending,
        custom_signal=custom,
    )


async def _get_checkpoint(
    tx: Transaction, instance_id: str, tenant_id: str | None, checkpoint_id: str
) -> bytes | None:
    row = await tx.row(
        "SELECT i.tenant_id, c.state FROM instances i"
        " LEFT JOIN checkpoints c ON c.instance_id = i.instance_id AND c.checkpoint_id = ?"
        " WHERE i.instance_id = ?",
        (checkpoint_id, instance_id),
    )
    if row is None or (tenant_id is not None and row[0] != tenant_id):
        raise InstanceNotFound(instance_id)
    return None if row[1] is None else bytes(row[1])


async def _replay_checkpoint(
    tx: Transaction, instance_id: str, tenant_id: str, checkpoint_id: str
) -> CheckpointResult:
    row = await tx.row(
        "SELECT i.tenant_id, c.state, r.attempt_number, r.error_message FROM instances i"
        " LEFT JOIN checkpoints c ON c.instance_id = i.instance_id AND c.checkpoint_id = ?"
        " LEFT JOIN retry_attempts r ON r.instance_id = i.instance_id AND r.checkpoint_id = ?"
        "  AND r.attempt_number = (SELECT MAX(m.attempt_number) FROM retry_attempts m"
        "   WHERE m.instance_id = i.instance_id AND m.checkpoint_id = ?)"
        " WHERE i.instance_id = ?",
        (checkpoint_id, checkpoint_id, checkpoint_id, instance_id),
    )
    if row is None or row[0] != tenant_id:
        raise InstanceNotFound(instance_id)
    _, state, attempt_number, error_message = row
    return CheckpointResult(
        found=state is not None,
        state=b"" if state is None else bytes(state),
        last_attempt=None
        if attempt_number is None
        else RetryAttempt(attempt_number, error_message),
    )


async def _begin_sleep(
    tx: Transaction,
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
        tx.write(
            "UPDATE instances SET status = ?, sleep_until = ?, sleep_checkpoint_id = ?"
            " WHERE instance_id = ?",
            (Status.SUSPENDED.value, wake_at_ms, checkpoint_id, instance_id),
        )
        _insert_event(tx, instance_id, EventType.SLEEP, checkpoint_id=checkpoint_id)
        return SleepPlan(wake_at_ms)
    if not await _is_recorded_sleep(tx, instance, checkpoint_id):
        # This sleep ended in an earlier run (a later one may be pending).
        return SleepPlan(None)
    _set_status(tx, instance_id, Status.SUSPENDED)
    return SleepPlan(instance.sleep_until_ms)


async def _is_recorded_sleep(tx: Transaction, instance: InstanceRecord, checkpoint_id: str) -> bool:
    """Whether the instance's ``sleep_until`` is the wake time of the sleep ``checkpoint_id``."""
    if instance.sleep_until_ms is None:
        return False
    row = await tx.row(
        "SELECT sleep_checkpoint_id FROM instances WHERE instance_id = ?",
        (instance.instance_id,),
    )
    return row is not None and row[0] == checkpoint_id


async def _finish_sleep(tx: Transaction, instance_id: str, checkpoint_id: str) -> Status:
    instance = await _find_instance(tx, instance_id, lock=True)
    if instance is None:
        return Status.UNKNOWN
    if instance.status is not Status.SUSPENDED or not await _is_recorded_sleep(
        tx, instance, checkpoint_id
    ):
        return instance.status
    tx.write(
        "UPDATE instances SET status = ?, sleep_until = NULL, sleep_checkpoint_id = NULL"
        " WHERE instance_id = ?",
        (Status.RUNNING.value, instance_id),
    )
    _insert_event(tx, instance_id, EventType.WAKE, checkpoint_id=checkpoint_id)
    return Status.RUNNING


async def _record_event(tx: Transaction, instance_id: str, tenant_id: str, event: Event) -> None:
    instance = await _existing_instance(tx, instance_id, tenant_id, lock=True)
    event_type = EventType(event.event_type)
    if event_type not in _ACCEPTED_WHEN_TERMINAL:
        _require_non_terminal(instance)
    _insert_event(
        tx,
        instance_id,
        event_type,
        checkpoint_id=event.checkpoint_id,
        payload=event.payload,
        subtype=event.subtype,
        client_ts_ms=event.timestamp_ms,
    )
    if event_type is EventType.COMPLETED:
        tx.write(
            "UPDATE instances SET status = ?, finished_at = ?, output = ? WHERE instance_id = ?",
            (Status.COMPLETED.value, tx.now_ms, bytes(event.payload), instance_id),
        )
    elif event_type is EventType.FAILED:
        tx.write(
            "UPDATE instances SET status = ?, finished_at = ?, error = ? WHERE instance_id = ?",
            (Status.FAILED.value, tx.now_ms, _error_text(event.payload), instance_id),
        )
    elif event_type is EventType.SUSPENDED:
        _set_status(tx, instance_id, Status.SUSPENDED)


def _error_text(payload: bytes) -> str:
    """A failed event's payload as the instance's error text (PROTOCOL.md 6.5)."""
    if not payload:
        return "Unknown error"
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return "Unknown error (binary payload)"


async def _get_instance_status(
    tx: Transaction, instance_id: str, tenant_id: str
) -> InstanceRecord | None:
    instance = await _find_instance(tx, instance_id)
    if instance is None or instance.tenant_id != tenant_id:
        return None
    return instance


async def _poll_signals(
    tx: Transaction, instance_id: str, tenant_id: str, checkpoint_id: str | None, peek: bool
) -> Signals:
    await _existing_instance(tx, instance_id, tenant_id)
    if checkpoint_id is None:
        custom = None
    elif peek:
        custom = await _peek_custom_signal(tx, instance_id, checkpoint_id)
    else:
        custom = await _take_custom_signal(tx, instance_id, checkpoint_id)
    return Signals(signal=await _pending_signal(tx, instance_id), custom_signal=custom)


async def _peek_custom_signal(
    tx: Transaction, instance_id: str, checkpoint_id: str
) -> CustomSignal | None:
    """The custom signal pending for (id, cp), with its id, left pending."""
    row = await tx.row(
        "SELECT payload, signal_id FROM custom_signals WHERE instance_id = ? AND checkpoint_id = ?",
        (instance_id, checkpoint_id),
    )
    return None if row is None else CustomSignal(checkpoint_id, row[0], int(row[1]))


async def _acknowledge_signal(
    tx: Transaction,
    instance_id: str,
    tenant_id: str,
    signal_type: SignalType,
    acknowledged: bool,
    idempotent: bool,
) -> AckResult:
    instance = await _existing_instance(tx, instance_id, tenant_id, lock=True)
    if not acknowledged:
        return AckResult(success=False, status=instance.status)
    latest = await tx.row(
        "SELECT signal_type, acknowledged_at FROM signals WHERE instance_id = ?", (instance_id,)
    )
    if latest is None or latest[0] != signal_type.value:
        return AckResult(success=False, status=instance.status)
    if latest[1] is None:
        tx.write(
            "UPDATE signals SET acknowledged_at = ? WHERE instance_id = ?",
            (tx.now_ms, instance_id),
        )
    elif not idempotent:
        return AckResult(success=False, status=instance.status)
    # A repeat of an acknowledgement (idempotent) applies its status change again.
    return AckResult(success=True, status=_apply_signal(tx, instance, signal_type))


def _apply_signal(tx: Transaction, instance: InstanceRecord, signal_type: SignalType) -> Status:
    """Change the status an acknowledged signal asks for; return the status after."""
    if instance.status.is_terminal:
        return instance.status
    if signal_type is SignalType.CANCEL:
        tx.write(
            "UPDATE instances SET status = ?, finished_at = ? WHERE instance_id = ?",
            (Status.CANCELLED.value, tx.now_ms, instance.instance_id),
        )
        return Status.CANCELLED
    if signal_type is SignalType.PAUSE:
        _set_status(tx, instance.instance_id, Status.SUSPENDED)
        return Status.SUSPENDED
    if instance.status is Status.SUSPENDED and instance.sleep_until_ms is None:
        _set_status(tx, instance.instance_id, Status.RUNNING)
        return Status.RUNNING
    return instance.status


async def _record_retry_attempt(
    tx: Transaction,
    instance_id: str,
    tenant_id: str,
    checkpoint_id: str,
    attempt_number: int,
    timestamp_ms: int | None,
    error_message: str | None,
) -> None:
    await _existing_instance(tx, instance_id, tenant_id)
    tx.write(
        "INSERT INTO retry_attempts"
        " (instance_id, checkpoint_id, attempt_number, client_ts, error_message, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (instance_id, checkpoint_id, attempt_number) DO NOTHING",
        (instance_id, checkpoint_id, attempt_number, timestamp_ms, error_message, tx.now_ms),
    )


# -- management ----------------------------------------------------------------------------


async def _send_signal(
    tx: Transaction, instance_id: str, signal_type: SignalType, payload: bytes
) -> None:
    _require_non_terminal(await _existing_instance(tx, instance_id, lock=True))
    tx.write(
        "INSERT INTO signals (instance_id, signal_type, payload, created_at, acknowledged_at)"
        " VALUES (?, ?, ?, ?, NULL)"
        " ON CONFLICT (instance_id) DO UPDATE SET signal_type = excluded.signal_type,"
        " payload = excluded.payload, created_at = excluded.created_at, acknowledged_at = NULL",
        (instance_id, signal_type.value, payload, tx.now_ms),
    )


async def _send_custom_signal(
    tx: Transaction, instance_id: str, checkpoint_id: str, payload: bytes
) -> None:
    _require_non_terminal(await _existing_instance(tx, instance_id, lock=True))
    tx.write(
        "UPDATE instances SET last_custom_signal_id = last_custom_signal_id + 1"
        " WHERE instance_id = ?",
        (instance_id,),
    )
    tx.write(
        "INSERT INTO custom_signals (instance_id, checkpoint_id, payload, created_at, signal_id)"
        " VALUES (?, ?, ?, ?,"
        " (SELECT last_custom_signal_id FROM instances WHERE instance_id = ?))"
        " ON CONFLICT (instance_id, checkpoint_id) DO UPDATE SET payload = excluded.payload,"
        " created_at = excluded.created_at, signal_id = excluded.signal_id",
        (instance_id, checkpoint_id, payload, tx.now_ms, instance_id),
    )


async def _create_instance(tx: Transaction, instance_id: str, tenant_id: str) -> InstanceRecord:
    row = await tx.row(
        "INSERT INTO instances (instance_id, tenant_id, status, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (instance_id) DO NOTHING"
        f" RETURNING {_INSTANCE_COLUMNS}",
        (instance_id, tenant_id, Status.PENDING.value, tx.now_ms),
    )
    if row is None:
        raise InstanceAlreadyExists(instance_id)
    return _instance_from_row(row)


async def _get_instance(tx: Transaction, instance_id: str) -> InstanceDetails:
    """The instance with its pending signal and counts, read in one statement (one snapshot)."""
    row = await tx.row(
        f"SELECT {_INSTANCE_COLUMNS_OF_I}, s.signal_type, s.payload,"
        " (SELECT COUNT(*) FROM checkpoints c WHERE c.instance_id = i.instance_id),"
        " (SELECT COUNT(*) FROM events e WHERE e.instance_id = i.instance_id)"
        " FROM instances i LEFT JOIN signals s"
        " ON s.instance_id = i.instance_id AND s.acknowledged_at IS NULL"
        " WHERE i.instance_id = ?",
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
        conditions.append("tenant_id = ?")
        parameters.append(tenant_id)
    if status is not None:
        conditions.append("status = ?")
        parameters.append(Status(status).value)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return where, parameters


async def _list_instances(
    tx: Transaction, tenant_id: str | None, status: Status | None, limit: int, offset: int
) -> list[InstanceRecord]:
    where, parameters = _instance_filter(tenant_id, status)
    rows = await tx.rows(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances{where}"
        " ORDER BY created_at DESC, instance_id DESC LIMIT ? OFFSET ?",
        (*parameters, limit, offset),
    )
    return [_instance_from_row(row) for row in rows]


async def _count_instances(tx: Transaction, tenant_id: str | None, status: Status | None) -> int:
    where, parameters = _instance_filter(tenant_id, status)
    return await _count(tx, f"SELECT COUNT(*) FROM instances{where}", parameters)


async def _list_instances_after(
    tx: Transaction,
    tenant_id: str | None,
    status: Status | None,
    after: tuple[int, str] | None,
    limit: int,
) -> list[InstanceRecord]:
    where, parameters = _instance_filter(tenant_id, status)
    if after is not None:
        created_at, instance_id = after
        where += " AND" if where else " WHERE"
        where += " (created_at < ? OR (created_at = ? AND instance_id < ?))"
        parameters += [created_at, created_at, instance_id]
    rows = await tx.rows(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances{where}"
        " ORDER BY created_at DESC, instance_id DESC LIMIT ?",
        (*parameters, limit),
    )
    return [_instance_from_row(row) for row in rows]


async def _count_by_status(tx: Transaction, tenant_id: str | None) -> dict[Status, int]:
    where, parameters = _instance_filter(tenant_id, None)
    rows = await tx.rows(
        f"SELECT status, COUNT(*) FROM instances{where} GROUP BY status", parameters
    )
    return {Status(status): int(count) for status, count in rows}


async def _list_checkpoints(
    tx: Transaction, instance_id: str, limit: int, offset: int
) -> list[CheckpointInfo]:
    await _existing_instance(tx, instance_id)
    rows = await tx.rows(
        f"SELECT checkpoint_id, {tx.dialect.byte_length}(state), created_at FROM checkpoints"
        " WHERE instance_id = ?"
        " ORDER BY created_at DESC, checkpoint_id DESC LIMIT ? OFFSET ?",
        (instance_id, limit, offset),
    )
    return [
        CheckpointInfo(checkpoint_id, int(size), created) for checkpoint_id, size, created in rows
    ]


async def _list_events(
    tx: Transaction,
    instance_id: str,
    event_type: EventType | None,
    subtype: str | None,
    limit: int,
    offset: int,
) -> list[EventRecord]:
    await _existing_instance(tx, instance_id)
    conditions = ["instance_id = ?"]
    parameters: list[Any] = [instance_id]
    if event_type is not None:
        conditions.append("event_type = ?")
        parameters.append(EventType(event_type).value)
    if subtype is not None:
        conditions.append("subtype = ?")
        parameters.append(subtype)
    rows = await tx.rows(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(conditions)}"
        " ORDER BY event_id DESC LIMIT ? OFFSET ?",
        (*parameters, limit, offset),
    )
    return [_event_from_row(row) for row in rows]


async def _count_purgeable(tx: Transaction, finished_before_ms: int) -> int:
    return await _count(
        tx,
        f"SELECT COUNT(*) FROM instances WHERE {_PURGEABLE}",
        (*_TERMINAL_VALUES, finished_before_ms),
    )


async def _purge_finished(tx: Transaction, finished_before_ms: int, limit: int) -> int:
    """Delete the oldest purgeable instances; their rows go by ON DELETE CASCADE."""
    return await tx.execute(
        "DELETE FROM instances WHERE instance_id IN ("
        f" SELECT instance_id FROM instances WHERE {_PURGEABLE}"
        " ORDER BY finished_at, instance_id LIMIT ?)",
        (*_TERMINAL_VALUES, finished_before_ms, limit),
    )
