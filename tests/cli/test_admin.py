"""runtara.admin on real databases: every management operation, on SQLite and PostgreSQL.

Instances are made through the persistence the way the server makes them
(register, checkpoint, events), with a ``task.Clock`` so their ages are
exact. ``Database.snapshot`` reads every row out of band, to check what an
operation wrote, or that a failed one wrote nothing.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from runtara.admin import (
    STATUS_ORDER,
    Admin,
    NoDatabase,
    SchemaOutdated,
    code_schema_version,
    open_admin,
)
from runtara.database_url import parse_database_url
from runtara.errors import (
    CheckpointNotFound,
    DatabaseError,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInstanceState,
    SchemaTooNew,
)
from runtara.model import Event, EventType, SignalType, Status
from runtara.persistence import open_persistence
from tests.cli.support import DAY_S, ENGINES, EPOCH_S, Database, fresh_database


@pytest_twisted.async_yield_fixture(params=ENGINES)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, empty database of each engine (PostgreSQL: see ``tests/pg.py``)."""
    database = await fresh_database(request.param, tmp_path)
    yield database
    await database.drop()


@pytest.fixture
def clock() -> task.Clock:
    clock = task.Clock()
    clock.advance(EPOCH_S)
    return clock


async def started(database: Database, clock: task.Clock, migrate: bool = True) -> Admin:
    from twisted.internet import reactor

    persistence = open_persistence(database.url, clock, reactor, pool_size=2)
    await persistence.start()
    if migrate:
        await persistence.migrate()
    return Admin(persistence, clock, database.url)


@pytest_twisted.async_yield_fixture
async def admin(database: Database, clock: task.Clock) -> AsyncIterator[Admin]:
    opened = await started(database, clock)
    yield opened
    await opened.close()


async def running(admin: Admin, instance_id: str, tenant: str = "t") -> None:
    registration = await admin.persistence.register_instance(instance_id, tenant, None)
    assert registration.success, registration


async def finished(admin: Admin, instance_id: str, status: Status, tenant: str = "t") -> None:
    """An instance with a row in every table, that ends in ``status``."""
    persistence = admin.persistence
    await running(admin, instance_id, tenant)
    await persistence.save_checkpoint(instance_id, tenant, "cp", b"state")
    await persistence.record_event(instance_id, tenant, Event(EventType.HEARTBEAT))
    await persistence.record_retry_attempt(instance_id, tenant, "cp", 1, None, "boom")
    await persistence.send_custom_signal(instance_id, "later", b"waiting")
    if status is Status.CANCELLED:
        await persistence.send_signal(instance_id, SignalType.CANCEL, b"")
        await persistence.acknowledge_signal(instance_id, tenant, SignalType.CANCEL, True)
    else:
        event_type = EventType.COMPLETED if status is Status.COMPLETED else EventType.FAILED
        await persistence.record_event(instance_id, tenant, Event(event_type, b"out"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- health and schema -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_reports_the_masked_url_the_schema_and_counts_by_status(admin, clock):
    await admin.create_instance("p-1", "t")
    await admin.create_instance("p-2", "t")
    await running(admin, "r-1")
    await finished(admin, "c-1", Status.COMPLETED)
    health = await admin.health()
    assert health.reachable
    assert health.database == admin.url.masked()
    assert health.schema_version == code_schema_version(admin.url) == health.code_schema_version
    assert health.schema_current
    assert list(health.counts) == list(STATUS_ORDER)
    assert health.counts[Status.PENDING] == 2
    assert health.counts[Status.RUNNING] == 1
    assert health.counts[Status.COMPLETED] == 1
    assert health.counts[Status.CANCELLED] == 0


@pytest_twisted.ensureDeferred
async def test_an_unmigrated_database_is_reported_and_refused(database, clock):
    admin = await started(database, clock, migrate=False)
    try:
        health = await admin.health()
        assert health.reachable and health.schema_version == 0 and not health.schema_current
        assert health.counts == {}
        with pytest.raises(SchemaOutdated, match="run `runtara migrate`"):
            await admin.require_current_schema()
    finally:
        await admin.close()


@pytest_twisted.ensureDeferred
async def test_migrate_reports_the_version_before_and_after(database, clock):
    admin = await started(database, clock, migrate=False)
    try:
        latest = code_schema_version(database.url)
        first = await admin.migrate()
        assert (first.previous_version, first.version, first.applied) == (0, latest, latest)
        again = await admin.migrate()
        assert (again.previous_version, again.version, again.applied) == (latest, latest, 0)
        await admin.require_current_schema()
    finally:
        await admin.close()


@pytest_twisted.ensureDeferred
async def test_a_database_migrated_by_a_newer_runtara_is_refused(database, clock):
    admin = await started(database, clock)
    try:
        await _insert_future_migration(admin)
        with pytest.raises(SchemaTooNew):
            await admin.require_current_schema()
        with pytest.raises(SchemaTooNew):
            await admin.migrate()
    finally:
        await admin.close()


async def _insert_future_migration(admin: Admin) -> None:
    from runtara.persistence.migrations import LEDGER_TABLE

    sql = f"INSERT INTO {LEDGER_TABLE} (version, name, applied_at) VALUES (999, 'future', 0)"
    if admin.url.sqlite_path is not None:
        connection = sqlite3.connect(admin.url.sqlite_path, isolation_level=None)
        connection.execute(sql)
        connection.close()
        return
    from twisted.internet import reactor

    from tests.pg import run_sql, with_connection

    assert admin.url.postgres_dsn is not None
    await with_connection(admin.url.postgres_dsn, reactor, lambda c: run_sql(c, sql))


# -- opening -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_missing_sqlite_file_is_not_created_unless_asked(tmp_path):
    from twisted.internet import reactor

    url = parse_database_url(f"sqlite://{tmp_path}/absent.db")
    with pytest.raises(NoDatabase, match="runtara migrate"):
        await open_admin(url, reactor)
    missing_directory = parse_database_url(f"sqlite://{tmp_path}/nowhere/runtara.db")
    with pytest.raises(NoDatabase, match="does not exist"):
        await open_admin(missing_directory, reactor, create=True)
    assert list(tmp_path.iterdir()) == []
    admin = await open_admin(url, reactor, create=True)
    await admin.close()
    assert (tmp_path / "absent.db").exists()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_postgresql_fails_with_a_database_error():
    from twisted.internet import reactor

    url = parse_database_url(f"postgresql://root:secret@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(DatabaseError) as raised:
        await open_admin(url, reactor)
    assert "secret" not in str(raised.value)


# -- instances -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_instances_newest_first_with_paging_and_filters(admin, clock):
    for number in range(5):
        await admin.create_instance(f"i-{number}", "a" if number % 2 else "b")
        clock.advance(1)
    await running(admin, "i-5", tenant="a")

    everything = await admin.list_instances()
    assert [record.instance_id for record in everything.items] == [
        f"i-{n}" for n in range(5, -1, -1)
    ]
    assert (everything.total, everything.has_more) == (6, False)

    first = await admin.list_instances(limit=4)
    assert [record.instance_id for record in first.items] == ["i-5", "i-4", "i-3", "i-2"]
    assert (first.total, first.offset, first.has_more) == (6, 0, True)
    rest = await admin.list_instances(limit=4, offset=4)
    assert [record.instance_id for record in rest.items] == ["i-1", "i-0"]
    assert (rest.total, rest.has_more) == (6, False)

    of_a = await admin.list_instances(tenant="a")
    assert [record.instance_id for record in of_a.items] == ["i-5", "i-3", "i-1"]
    pending_of_a = await admin.list_instances(tenant="a", status="pending")
    assert [record.instance_id for record in pending_of_a.items] == ["i-3", "i-1"]
    assert pending_of_a.total == 2
    assert (await admin.list_instances(status=Status.FAILED)).items == []


@pytest_twisted.ensureDeferred
async def test_show_instance_has_every_field_the_pending_signal_and_counts(admin, clock):
    await running(admin, "i-1")
    await admin.persistence.save_checkpoint("i-1", "t", "a", b"12345")
    await admin.send_signal("i-1", "pause", b"why")
    details = await admin.show_instance("i-1")
    assert details.instance.instance_id == "i-1"
    assert details.instance.status is Status.RUNNING
    assert details.instance.checkpoint_id == "a"
    assert details.instance.started_at_ms == EPOCH_S * 1000
    assert details.pending_signal is not None
    assert (details.pending_signal.signal_type, details.pending_signal.payload) == (
        SignalType.PAUSE,
        b"why",
    )
    assert (details.checkpoint_count, details.event_count) == (1, 1)
    with pytest.raises(InstanceNotFound):
        await admin.show_instance("nope")


@pytest_twisted.ensureDeferred
async def test_create_instance_is_pending_and_refuses_an_existing_id(admin, database):
    record = await admin.create_instance("i-1", "t")
    assert (record.status, record.tenant_id, record.created_at_ms) == (
        Status.PENDING,
        "t",
        EPOCH_S * 1000,
    )
    before = await database.snapshot()
    with pytest.raises(InstanceAlreadyExists):
        await admin.create_instance("i-1", "another-tenant")
    assert await database.snapshot() == before


# -- checkpoints and events ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_checkpoints_newest_first_with_sizes(admin, clock):
    await running(admin, "i-1")
    for name, state in (("a", b""), ("b", b"xy"), ("c", b"xyz")):
        await admin.persistence.save_checkpoint("i-1", "t", name, state)
        clock.advance(1)
    page = await admin.list_checkpoints("i-1", limit=2)
    assert [(info.checkpoint_id, info.size_bytes) for info in page.items] == [("c", 3), ("b", 2)]
    assert page.items[0].created_at_ms == (EPOCH_S + 2) * 1000
    assert (page.total, page.has_more) == (3, True)
    rest = await admin.list_checkpoints("i-1", limit=2, offset=2)
    assert [(info.checkpoint_id, info.size_bytes) for info in rest.items] == [("a", 0)]
    assert not rest.has_more
    with pytest.raises(InstanceNotFound):
        await admin.list_checkpoints("nope")


@pytest_twisted.ensureDeferred
async def test_get_checkpoint_of_any_status(admin):
    await finished(admin, "i-1", Status.COMPLETED)
    assert await admin.get_checkpoint("i-1", "cp") == b"state"
    with pytest.raises(CheckpointNotFound):
        await admin.get_checkpoint("i-1", "other")
    with pytest.raises(InstanceNotFound):
        await admin.get_checkpoint("nope", "cp")


@pytest_twisted.ensureDeferred
async def test_list_events_newest_first_filtered_and_paged(admin):
    await running(admin, "i-1")
    persistence = admin.persistence
    for number in range(3):
        event = Event(EventType.CUSTOM, f"p{number}".encode(), "cp", 5, "progress")
        await persistence.record_event("i-1", "t", event)
    await persistence.record_event("i-1", "t", Event(EventType.CUSTOM, b"x", subtype="other"))
    await persistence.record_event("i-1", "t", Event(EventType.HEARTBEAT))

    everything = await admin.list_events("i-1")
    assert [event.event_type for event in everything.items] == [
        EventType.HEARTBEAT,
        *[EventType.CUSTOM] * 4,
        EventType.STARTED,
    ]
    assert (everything.total, everything.has_more) == (6, False)

    progress = await admin.list_events("i-1", "custom", "progress", limit=2)
    assert [event.payload for event in progress.items] == [b"p2", b"p1"]
    assert (progress.total, progress.has_more) == (None, True)
    assert progress.items[0].checkpoint_id == "cp" and progress.items[0].client_ts_ms == 5
    last = await admin.list_events("i-1", EventType.CUSTOM, "progress", limit=2, offset=2)
    assert [event.payload for event in last.items] == [b"p0"]
    assert not last.has_more
    with pytest.raises(InstanceNotFound):
        await admin.list_events("nope")


# -- signals -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_newer_signal_replaces_the_older_and_is_seen_at_the_next_checkpoint(admin):
    await running(admin, "i-1")
    await admin.send_signal("i-1", SignalType.PAUSE, b"1")
    await admin.send_signal("i-1", "cancel", b"2")
    result = await admin.persistence.save_checkpoint("i-1", "t", "a", b"")
    assert result.pending_signal is not None
    assert (result.pending_signal.signal_type, result.pending_signal.payload) == (
        SignalType.CANCEL,
        b"2",
    )


@pytest_twisted.ensureDeferred
async def test_signals_to_unknown_or_terminal_instances_are_refused_and_write_nothing(
    admin, database
):
    await finished(admin, "done", Status.COMPLETED)
    before = await database.snapshot()
    with pytest.raises(InvalidInstanceState):
        await admin.send_signal("done", SignalType.CANCEL, b"")
    with pytest.raises(InstanceNotFound):
        await admin.send_signal("nope", SignalType.CANCEL, b"")
    with pytest.raises(InstanceNotFound):
        await admin.send_custom_signal("nope", "cp", b"")
    with pytest.raises(InvalidInstanceState):
        await admin.send_custom_signal("done", "cp", b"too late")
    assert await database.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_waits_for_its_checkpoint_and_the_newest_wins(admin):
    await admin.create_instance("i-1", "t")
    await admin.send_custom_signal("i-1", "gate", b"old")
    await admin.send_custom_signal("i-1", "gate", b"new")
    await running(admin, "i-1")
    before = await admin.persistence.save_checkpoint("i-1", "t", "first", b"")
    assert before.custom_signal is None
    at_gate = await admin.persistence.save_checkpoint("i-1", "t", "gate", b"")
    assert at_gate.custom_signal is not None
    assert (at_gate.custom_signal.checkpoint_id, at_gate.custom_signal.payload) == ("gate", b"new")


# -- purge -------------------------------------------------------------------------------------


async def _purge_scenario(admin: Admin, clock: task.Clock) -> None:
    """Old terminal instances, old live ones, and one that finished recently."""
    await finished(admin, "old-completed", Status.COMPLETED)
    await finished(admin, "old-failed", Status.FAILED)
    await finished(admin, "old-cancelled", Status.CANCELLED)
    await running(admin, "old-running")
    await admin.create_instance("old-pending", "t")
    await running(admin, "finishes-late")
    clock.advance(3 * DAY_S)
    await finished(admin, "new-completed", Status.COMPLETED)
    await admin.persistence.record_event("finishes-late", "t", Event(EventType.COMPLETED))


OLD_FINISHED = {"old-completed", "old-failed", "old-cancelled"}


def _without(snapshot: dict[str, list[tuple[Any, ...]]], removed: set[str]) -> dict[str, Any]:
    return {
        table: [row for row in rows if row[0] not in removed] for table, rows in snapshot.items()
    }


@pytest_twisted.ensureDeferred
async def test_purge_deletes_exactly_the_old_finished_instances_with_all_their_rows(
    admin, database, clock
):
    await _purge_scenario(admin, clock)
    before = await database.snapshot()
    assert {row[0] for row in before["retry_attempts"]} >= OLD_FINISHED
    progress: list[tuple[int, int]] = []
    result = await admin.purge(
        2 * DAY_S, on_progress=lambda *done: progress.append(done), batch_size=2
    )
    assert (result.count, result.dry_run) == (3, False)
    assert result.finished_before_ms == (EPOCH_S + DAY_S) * 1000
    assert progress == [(2, 3), (3, 3)]
    assert await database.snapshot() == _without(before, OLD_FINISHED)


@pytest_twisted.ensureDeferred
async def test_purge_dry_run_counts_and_deletes_nothing(admin, database, clock):
    await _purge_scenario(admin, clock)
    before = await database.snapshot()
    result = await admin.purge(2 * DAY_S, dry_run=True)
    assert (result.count, result.dry_run) == (3, True)
    assert await database.snapshot() == before
    clock.advance(1)
    everything = await admin.purge(0, dry_run=True)
    assert everything.count == 5


@pytest_twisted.ensureDeferred
async def test_purge_with_nothing_old_enough_deletes_nothing(admin, database, clock):
    await _purge_scenario(admin, clock)
    before = await database.snapshot()
    result = await admin.purge(30 * DAY_S)
    assert result.count == 0
    assert result.finished_before_ms == (EPOCH_S + 3 * DAY_S - 30 * DAY_S) * 1000
    older_than_the_epoch = await admin.purge(100 * 365 * DAY_S)
    assert (older_than_the_epoch.count, older_than_the_epoch.finished_before_ms) == (0, 0)
    assert await database.snapshot() == before
