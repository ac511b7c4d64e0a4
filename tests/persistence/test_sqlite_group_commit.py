"""Group commit in the SQLite provider.

Operations that arrive while the connection is busy share one transaction,
each inside its own savepoint, and are answered only after its COMMIT. The
tests count the COMMITs the connection really runs (a trace callback
installed on the pool's connection by a test-only subclass) and read the data
back through a second, raw connection.

Batches are made deterministic: an operation submitted while the connection
is idle starts alone at once; every operation submitted in the same reactor
turn after it waits and forms the next batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList

from runtara.errors import DatabaseError, InstanceNotFound
from runtara.model import CheckpointResult, Event, EventType
from runtara.persistence import _group_commit as group_commit
from runtara.persistence import sqlite as sqlite_persistence
from runtara.persistence._group_commit import Operation
from runtara.persistence.sqlite import DIALECT, SQLitePersistence
from runtara.persistence.transaction import Transaction

TENANT = "tenant-a"


class TracedPersistence(SQLitePersistence):
    """The SQLite provider, recording every statement its connection runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements: list[str] = []
        configure = self.engine.configure_connection

        def configure_and_trace(connection: sqlite3.Connection) -> None:
            configure(connection)
            connection.set_trace_callback(self.statements.append)

        self.engine.configure_connection = configure_and_trace

    def count(self, statement: str) -> int:
        return sum(1 for seen in self.statements if seen == statement)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runtara.db"


def _provider(path: Path, clock: task.Clock, **options: Any) -> TracedPersistence:
    from twisted.internet import reactor

    return TracedPersistence(str(path), clock, reactor=reactor, **options)


@pytest_twisted.async_yield_fixture
async def provider(path: Path, clock: task.Clock) -> AsyncIterator[TracedPersistence]:
    provider = _provider(path, clock)
    await provider.start()
    await provider.migrate()
    yield provider
    await provider.close()


@pytest.fixture
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to the same file, outside the provider."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=5)
    yield connection
    connection.close()


async def _register(provider: SQLitePersistence, *instance_ids: str) -> None:
    for instance_id in instance_ids:
        registration = await provider.register_instance(instance_id, TENANT, None)
        assert registration.success


async def _settle(deferreds: list[Deferred[Any]]) -> list[Any]:
    """Each Deferred's result, or the exception it failed with."""
    settled = await DeferredList(deferreds, consumeErrors=True)
    return [value if ok else value.value for ok, value in settled]


def _checkpoints(raw: sqlite3.Connection) -> set[tuple[str, str]]:
    return set(raw.execute("SELECT instance_id, checkpoint_id FROM checkpoints").fetchall())


@pytest_twisted.ensureDeferred
async def test_concurrent_operations_share_one_commit(
    provider: TracedPersistence, raw: sqlite3.Connection
) -> None:
    ids = [f"i-{n}" for n in range(64)]
    await _register(provider, *ids)
    provider.statements.clear()

    results = await _settle(
        [provider.save_checkpoint(i, TENANT, "step-1", i.encode()) for i in ids]
    )

    assert all(isinstance(result, CheckpointResult) and not result.found for result in results)
    # The first one ran alone; the 63 that arrived meanwhile were one batch.
    assert provider.count("COMMIT") == 2
    assert provider.count("SAVEPOINT operation") == 63
    assert _checkpoints(raw) == {(i, "step-1") for i in ids}


@pytest_twisted.ensureDeferred
async def test_a_lone_operation_is_committed_alone_at_once(
    provider: TracedPersistence, raw: sqlite3.Connection
) -> None:
    await _register(provider, "i-1")
    provider.statements.clear()

    await provider.save_checkpoint("i-1", TENANT, "step-1", b"state")

    assert provider.statements[0] == "BEGIN IMMEDIATE"
    assert provider.statements[-1] == "COMMIT"
    assert provider.count("COMMIT") == 1
    assert provider.count("SAVEPOINT operation") == 0
    assert _checkpoints(raw) == {("i-1", "step-1")}


@pytest_twisted.ensureDeferred
async def test_a_batch_holds_at_most_max_batch_operations(
    path: Path, clock: task.Clock, raw: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_persistence, "MAX_BATCH", 4)
    provider = _provider(path, clock)
    await provider.start()
    try:
        await provider.migrate()
        ids = [f"i-{n}" for n in range(11)]
        await _register(provider, *ids)
        provider.statements.clear()

        results = await _settle([provider.save_checkpoint(i, TENANT, "s", b"") for i in ids])
    finally:
        await provider.close()

    assert all(isinstance(result, CheckpointResult) for result in results)
    # 1 alone, then the 10 waiting ones as 4 + 4 + 2.
    assert provider.count("COMMIT") == 4
    assert len(_checkpoints(raw)) == 11


@pytest_twisted.ensureDeferred
async def test_a_failing_operation_in_a_batch_fails_only_itself(
    provider: TracedPersistence, raw: sqlite3.Connection
) -> None:
    await _register(provider, "a", "b", "c")
    provider.statements.clear()

    results = await _settle(
        [
            provider.save_checkpoint("a", TENANT, "step-1", b"a"),
            provider.save_checkpoint("b", TENANT, "step-1", b"b"),
            provider.save_checkpoint("ghost", TENANT, "step-1", b"?"),
            provider.save_checkpoint("c", TENANT, "step-1", b"c"),
            provider.get_checkpoint("ghost", TENANT, "step-1"),
        ]
    )

    assert provider.count("COMMIT") == 2
    assert isinstance(results[2], InstanceNotFound)
    assert isinstance(results[4], InstanceNotFound)
    assert all(isinstance(results[n], CheckpointResult) for n in (0, 1, 3))
    assert _checkpoints(raw) == {("a", "step-1"), ("b", "step-1"), ("c", "step-1")}


@pytest_twisted.ensureDeferred
async def test_a_failing_operation_in_a_batch_leaves_nothing_half_written(
    provider: TracedPersistence, raw: sqlite3.Connection
) -> None:
    await _register(provider, "a", "b", "c")
    # save_checkpoint inserts the checkpoint, then fails at updating the instance.
    raw.execute(
        "CREATE TRIGGER refuse_poison BEFORE UPDATE OF checkpoint_id ON instances"
        " WHEN NEW.checkpoint_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    provider.statements.clear()

    results = await _settle(
        [
            provider.save_checkpoint("a", TENANT, "step-1", b"a"),
            provider.save_checkpoint("b", TENANT, "step-1", b"b"),
            provider.save_checkpoint("b", TENANT, "poison", b"half"),
            provider.save_checkpoint("c", TENANT, "step-1", b"c"),
        ]
    )

    assert provider.count("COMMIT") == 2
    assert provider.count("ROLLBACK TO operation") == 1
    failed = results[2]
    assert isinstance(failed, DatabaseError)
    assert (failed.operation, failed.details) == ("save_checkpoint", "constraint violated")
    assert all(isinstance(results[n], CheckpointResult) for n in (0, 1, 3))
    assert _checkpoints(raw) == {("a", "step-1"), ("b", "step-1"), ("c", "step-1")}
    current = dict(raw.execute("SELECT instance_id, checkpoint_id FROM instances").fetchall())
    assert current == {"a": "step-1", "b": "step-1", "c": "step-1"}


@pytest_twisted.ensureDeferred
async def test_a_failing_commit_fails_every_operation_and_writes_nothing(
    provider: TracedPersistence, raw: sqlite3.Connection
) -> None:
    await _register(provider, "a", "b", "c")
    # A deferred foreign key is checked at COMMIT: the checkpoint 'dangling'
    # makes the whole transaction uncommittable.
    raw.executescript(
        "CREATE TABLE audit (instance_id TEXT REFERENCES instances (instance_id)"
        " DEFERRABLE INITIALLY DEFERRED);"
        "CREATE TRIGGER audit_dangling AFTER INSERT ON checkpoints"
        " WHEN NEW.checkpoint_id = 'dangling'"
        " BEGIN INSERT INTO audit VALUES ('no-such-instance'); END;"
    )
    first = provider.save_checkpoint("a", TENANT, "step-0", b"alone")
    batch = [
        provider.save_checkpoint("a", TENANT, "step-1", b"a"),
        provider.save_checkpoint("b", TENANT, "dangling", b"b"),
        provider.record_event("c", TENANT, Event(EventType.HEARTBEAT, b"")),
        provider.get_instance_status("c", TENANT),
    ]

    assert isinstance(await first, CheckpointResult)
    results = await _settle(batch)

    names = ["save_checkpoint", "save_checkpoint", "record_event", "get_instance_status"]
    for result, name in zip(results, names, strict=True):
        assert isinstance(result, DatabaseError)
        assert (result.operation, result.details) == (name, "constraint violated")
    assert _checkpoints(raw) == {("a", "step-0")}
    assert raw.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0
    events = raw.execute("SELECT COUNT(*) FROM events WHERE instance_id = 'c'").fetchone()[0]
    assert events == 1
    # The connection is usable afterwards: the failed transaction was rolled back.
    again = await provider.save_checkpoint("a", TENANT, "step-1", b"a")
    assert again.found is False
    assert _checkpoints(raw) == {("a", "step-0"), ("a", "step-1")}


@pytest_twisted.ensureDeferred
async def test_callers_are_answered_only_after_their_data_is_durable(
    provider: TracedPersistence, path: Path
) -> None:
    ids = [f"i-{n}" for n in range(32)]
    await _register(provider, *ids)
    provider.statements.clear()
    seen: dict[str, bytes | None] = {}

    def read_back(result: CheckpointResult, instance_id: str) -> CheckpointResult:
        other = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            row = other.execute(
                "SELECT state FROM checkpoints WHERE instance_id = ? AND checkpoint_id = 's'",
                (instance_id,),
            ).fetchone()
        finally:
            other.close()
        seen[instance_id] = None if row is None else bytes(row[0])
        return result

    pending = []
    for instance_id in ids:
        saved = provider.save_checkpoint(instance_id, TENANT, "s", instance_id.encode())
        saved.addCallback(read_back, instance_id)
        pending.append(saved)
    await _settle(pending)

    assert seen == {instance_id: instance_id.encode() for instance_id in ids}
    assert provider.count("COMMIT") == 2


@pytest_twisted.ensureDeferred
async def test_close_answers_queued_operations_first_and_refuses_later_ones(
    path: Path, clock: task.Clock, raw: sqlite3.Connection
) -> None:
    provider = _provider(path, clock)
    await provider.start()
    await provider.migrate()
    ids = [f"i-{n}" for n in range(10)]
    await _register(provider, *ids)

    answered: list[str] = []

    def note(result: Any, what: str) -> Any:
        answered.append(what)
        return result

    queued = [provider.save_checkpoint(i, TENANT, "s", b"") for i in ids]
    for saved in queued:
        saved.addBoth(note, "operation")
    closed = provider.close()
    closed.addCallback(note, "closed")
    late = provider.save_checkpoint("i-0", TENANT, "late", b"")
    again = provider.close()

    results = await _settle(queued)
    await closed
    await again

    assert answered == ["operation"] * len(ids) + ["closed"]
    assert all(isinstance(result, CheckpointResult) for result in results)
    late_error = (await _settle([late]))[0]
    assert isinstance(late_error, DatabaseError)
    assert late_error.details == "database is not open"
    assert _checkpoints(raw) == {(i, "s") for i in ids}
    assert await provider.check_health() is False


@pytest_twisted.ensureDeferred
async def test_reads_alone_do_not_take_the_write_lock(
    path: Path, clock: task.Clock, raw: sqlite3.Connection
) -> None:
    provider = _provider(path, clock, busy_timeout_ms=0)
    await provider.start()
    try:
        await provider.migrate()
        await _register(provider, "a")
        provider.statements.clear()
        raw.execute("BEGIN IMMEDIATE")
        try:
            records = await _settle([provider.get_instance_status("a", TENANT) for _ in range(5)])
        finally:
            raw.execute("ROLLBACK")
    finally:
        await provider.close()

    assert all(record is not None and record.instance_id == "a" for record in records)
    # One read alone, then the other four together, each in a plain BEGIN.
    assert (provider.count("BEGIN"), provider.count("BEGIN IMMEDIATE")) == (2, 0)


def test_an_error_that_ends_the_transaction_fails_the_whole_batch(
    raw: sqlite3.Connection,
) -> None:
    raw.execute("CREATE TABLE notes (note TEXT)")

    async def write(tx: Transaction, note: str) -> None:
        await tx.execute("INSERT INTO notes VALUES (?)", (note,))

    async def end_the_transaction(tx: Transaction) -> None:
        # What SQLite does on its own after some errors (e.g. a full disk).
        await tx.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    batch = [
        Operation(group_commit.WRITE, write, ("first",), 0),
        Operation(group_commit.WRITE, end_the_transaction, (), 0),
        Operation(group_commit.WRITE, write, ("third",), 0),
    ]
    with pytest.raises(sqlite3.OperationalError):
        group_commit._run_batch(raw, DIALECT, batch)

    assert raw.in_transaction is False
    assert raw.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0
