"""Facts about the SQLite provider that no other engine shares.

Its connection settings (WAL, ``synchronous``, foreign keys), data surviving
a restart, how SQLite errors become ``DatabaseError``, and that a write that
fails midway (an operation or a migration) leaves nothing behind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from runtara.errors import DatabaseError
from runtara.model import Event, EventType, Status
from runtara.persistence import store as store_module
from runtara.persistence.migrations import Migration, load_migrations
from runtara.persistence.sqlite import SQLitePersistence
from tests.persistence.support import EPOCH_S

TENANT = "tenant-a"
SECRET_ID = "instance-with-a-secret-name"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runtara.db"


def _provider(path: Path, clock: task.Clock, **options: Any) -> SQLitePersistence:
    from twisted.internet import reactor

    return SQLitePersistence(str(path), clock, reactor=reactor, **options)


@pytest_twisted.async_yield_fixture
async def provider(path: Path, clock: task.Clock) -> AsyncIterator[SQLitePersistence]:
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


def _count(raw: sqlite3.Connection, table: str) -> int:
    return int(raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _assert_no_sql_or_data(error: DatabaseError) -> None:
    for leak in ("SELECT", "INSERT", "UPDATE", "DELETE", "FROM", "checkpoints", SECRET_ID):
        assert leak not in error.message


# -- connection settings --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_connection_runs_wal_full_sync_and_foreign_keys(
    provider: SQLitePersistence, raw: sqlite3.Connection
) -> None:
    settings = await provider.connection_settings()

    assert settings == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(("mode", "level"), [("normal", 1), ("EXTRA", 3), ("OFF", 0)])
@pytest_twisted.ensureDeferred
async def test_synchronous_can_be_chosen(
    path: Path, clock: task.Clock, mode: str, level: int
) -> None:
    provider = _provider(path, clock, synchronous=mode, busy_timeout_ms=250)
    await provider.start()
    try:
        settings = await provider.connection_settings()
    finally:
        await provider.close()

    assert (settings["synchronous"], settings["busy_timeout"]) == (level, 250)


@pytest.mark.parametrize(
    "options",
    [{"synchronous": "FULL; DROP TABLE instances"}, {"busy_timeout_ms": -1}],
    ids=["synchronous", "busy-timeout"],
)
def test_bad_settings_are_refused(path: Path, clock: task.Clock, options: Any) -> None:
    with pytest.raises(ValueError):
        _provider(path, clock, **options)


def test_the_provider_knows_its_path(path: Path, clock: task.Clock) -> None:
    assert _provider(path, clock).path == str(path)


# -- restart ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_data_survives_closing_and_reopening(
    provider: SQLitePersistence, path: Path, clock: task.Clock
) -> None:
    await provider.register_instance("i-1", TENANT, None)
    await provider.save_checkpoint("i-1", TENANT, "step-1", bytes(range(256)))
    await provider.close()

    reopened = _provider(path, clock)
    await reopened.start()
    try:
        version = await reopened.migrate()
        state = await reopened.get_checkpoint("i-1", TENANT, "step-1")
        record = await reopened.get_instance_status("i-1", TENANT)
    finally:
        await reopened.close()

    assert version == load_migrations("sqlite")[-1].version
    assert state == bytes(range(256))
    assert record is not None and record.status is Status.RUNNING


# -- errors -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_database_error_carries_no_sql_text(
    provider: SQLitePersistence, raw: sqlite3.Connection
) -> None:
    await provider.register_instance(SECRET_ID, TENANT, None)
    raw.execute("DROP TABLE checkpoints")

    with pytest.raises(DatabaseError) as failed:
        await provider.save_checkpoint(SECRET_ID, TENANT, "step-1", b"state")

    error = failed.value
    assert error.operation == "save_checkpoint"
    assert error.message == f"Database error during 'save_checkpoint': {error.details}"
    assert error.retryable is False
    _assert_no_sql_or_data(error)


@pytest_twisted.ensureDeferred
async def test_a_locked_database_is_a_retryable_error(
    path: Path, clock: task.Clock, raw: sqlite3.Connection
) -> None:
    provider = _provider(path, clock, busy_timeout_ms=0)
    await provider.start()
    await provider.migrate()
    try:
        raw.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseError) as failed:
            await provider.register_instance(SECRET_ID, TENANT, None)
        raw.execute("ROLLBACK")

        retried = await provider.register_instance(SECRET_ID, TENANT, None)
    finally:
        await provider.close()

    assert failed.value.message == "Database error during 'register_instance': database is locked"
    assert failed.value.retryable is True
    assert retried.success is True


@pytest_twisted.ensureDeferred
async def test_an_unopenable_file_fails_start_with_a_database_error(
    tmp_path: Path, clock: task.Clock
) -> None:
    provider = _provider(tmp_path / "missing-directory" / "runtara.db", clock)

    with pytest.raises(DatabaseError) as failed:
        await provider.start()

    assert failed.value.operation == "start"
    assert failed.value.details == "unable to open database file"
    assert await provider.check_health() is False


@pytest_twisted.ensureDeferred
async def test_operations_on_a_closed_provider_fail_with_a_database_error(
    provider: SQLitePersistence,
) -> None:
    await provider.close()

    with pytest.raises(DatabaseError) as failed:
        await provider.register_instance("i-1", TENANT, None)

    assert failed.value.message == "Database error during 'register_instance': database is not open"


# -- nothing half-written --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_registration_failing_at_its_event_writes_no_instance(
    provider: SQLitePersistence, raw: sqlite3.Connection
) -> None:
    raw.execute(
        "CREATE TRIGGER refuse_events BEFORE INSERT ON events"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )

    with pytest.raises(DatabaseError) as failed:
        await provider.register_instance(SECRET_ID, TENANT, None)

    assert failed.value.details == "constraint violated"
    assert _count(raw, "instances") == 0
    raw.execute("DROP TRIGGER refuse_events")
    registration = await provider.register_instance(SECRET_ID, TENANT, None)
    assert registration.success is True
    assert (_count(raw, "instances"), _count(raw, "events")) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_an_event_failing_at_its_status_change_writes_no_event(
    provider: SQLitePersistence, raw: sqlite3.Connection
) -> None:
    await provider.register_instance("i-1", TENANT, None)
    raw.execute(
        "CREATE TRIGGER refuse_finishing BEFORE UPDATE OF status ON instances"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )

    with pytest.raises(DatabaseError):
        await provider.record_event("i-1", TENANT, Event(EventType.COMPLETED, b"out"))

    assert _count(raw, "events") == 1
    record = await provider.get_instance_status("i-1", TENANT)
    assert record is not None and record.status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_a_failing_migration_is_not_applied_and_not_recorded(
    path: Path, clock: task.Clock, raw: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = load_migrations("sqlite")
    broken = Migration(
        len(shipped) + 1,
        "broken",
        "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    monkeypatch.setattr(store_module, "load_migrations", lambda dialect: [*shipped, broken])
    provider = _provider(path, clock)
    await provider.start()
    try:
        with pytest.raises(DatabaseError) as failed:
            await provider.migrate()
        version = await provider.schema_version()
    finally:
        await provider.close()

    assert failed.value.operation == "migrate"
    assert version == len(shipped)
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "instances" in tables
    assert "half_done" not in tables


@pytest_twisted.ensureDeferred
async def test_migrations_apply_one_after_another(
    path: Path, clock: task.Clock, raw: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = load_migrations("sqlite")
    later = Migration(
        len(shipped) + 1,
        "later",
        "-- a comment; with a semicolon\n"
        "CREATE TABLE later (note TEXT DEFAULT 'a;b');\n"
        "CREATE TRIGGER later_stamp AFTER INSERT ON later BEGIN\n"
        "    UPDATE later SET note = note || ';' WHERE rowid = new.rowid;\n"
        "END;\n",
    )
    provider = _provider(path, clock)
    await provider.start()
    try:
        first = await provider.migrate()
        monkeypatch.setattr(store_module, "load_migrations", lambda dialect: [*shipped, later])
        clock.advance(60)
        second = await provider.migrate()
    finally:
        await provider.close()

    assert (first, second) == (len(shipped), len(shipped) + 1)
    ledger = raw.execute("SELECT version, applied_at FROM runtara_schema_migrations").fetchall()
    assert ledger[-1] == (len(shipped) + 1, (EPOCH_S + 60) * 1000)
    raw.execute("INSERT INTO later DEFAULT VALUES")
    assert raw.execute("SELECT note FROM later").fetchone()[0] == "a;b;"
