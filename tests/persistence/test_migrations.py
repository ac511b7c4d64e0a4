"""Migrations: the ledger, refusing newer schemas, and loading the files.

The provider tests run once per engine of the registry in ``conftest.py``;
the ``load_migrations`` tests use a temporary directory of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from runtara.errors import SchemaTooNew
from runtara.model import SleepPlan
from runtara.persistence.migrations import (
    LEDGER_TABLE,
    Migration,
    load_migrations,
    pending_migrations,
)
from tests.persistence.support import EPOCH_MS, FreshDatabase, MakeDatabase


async def _ledger(database: FreshDatabase) -> list[tuple[Any, ...]]:
    return await database.execute(
        f"SELECT version, name, applied_at FROM {LEDGER_TABLE} ORDER BY version"
    )


@pytest_twisted.ensureDeferred
async def test_a_fresh_database_has_schema_version_zero(
    database: FreshDatabase, clock: Any
) -> None:
    provider = database.provider(clock)
    await provider.start()
    try:
        assert await provider.schema_version() == 0
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_migrate_applies_every_file_with_a_ledger_row(
    database: FreshDatabase, clock: Any
) -> None:
    migrations = load_migrations(database.dialect)
    provider = database.provider(clock)
    await provider.start()
    try:
        version = await provider.migrate()

        assert version == migrations[-1].version
        assert await provider.schema_version() == version
    finally:
        await provider.close()
    assert await _ledger(database) == [
        (migration.version, migration.name, EPOCH_MS) for migration in migrations
    ]


@pytest_twisted.ensureDeferred
async def test_migrate_is_idempotent(database: FreshDatabase, clock: Any) -> None:
    provider = database.provider(clock)
    await provider.start()
    try:
        first = await provider.migrate()
        ledger = await _ledger(database)
        schema = await database.schema()
        clock.advance(60)

        second = await provider.migrate()

        assert second == first
        assert await _ledger(database) == ledger
        assert await database.schema() == schema
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_a_database_migrated_by_a_newer_runtara_is_refused(
    database: FreshDatabase, clock: Any
) -> None:
    latest = load_migrations(database.dialect)[-1].version
    provider = database.provider(clock)
    await provider.start()
    try:
        await provider.migrate()
        await database.execute(
            f"INSERT INTO {LEDGER_TABLE} (version, name, applied_at)"
            f" VALUES ({latest + 1}, 'from_the_future', 0)"
        )

        with pytest.raises(SchemaTooNew) as refused:
            await provider.migrate()

        assert (refused.value.database_version, refused.value.code_version) == (
            latest + 1,
            latest,
        )
        assert await provider.schema_version() == latest + 1
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_migrated_schema_equals_the_files_applied_directly(
    make_database: MakeDatabase, clock: Any
) -> None:
    migrated = await make_database()
    provider = migrated.provider(clock)
    await provider.start()
    try:
        await provider.migrate()
    finally:
        await provider.close()
    direct = await make_database()
    for migration in load_migrations(direct.dialect):
        await direct.execute_script(migration.sql)

    migrated_schema = await migrated.schema()

    assert migrated_schema
    assert migrated_schema == await direct.schema()


# -- load_migrations / pending_migrations --------------------------------------------


def _write(directory: Path, *names: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name in names:
        (directory / name).write_text(f"-- {name}\n", encoding="utf-8")
    return directory


def test_load_migrations_orders_files_and_ignores_other_names(tmp_path: Path) -> None:
    directory = _write(
        tmp_path / "sql", "0002_second.sql", "0001_first.sql", "README.md", "0003_Bad.sql"
    )

    migrations = load_migrations("sqlite", directory)

    assert migrations == [
        Migration(1, "first", "-- 0001_first.sql\n"),
        Migration(2, "second", "-- 0002_second.sql\n"),
    ]


@pytest.mark.parametrize(
    "names",
    [
        ("0001_first.sql", "0003_third.sql"),
        ("0002_second.sql",),
        ("0001_first.sql", "0001_again.sql"),
        (),
    ],
    ids=["gap", "no-first", "duplicate", "empty"],
)
def test_load_migrations_refuses_a_broken_sequence(tmp_path: Path, names: tuple[str, ...]) -> None:
    directory = _write(tmp_path / "sql", *names)

    with pytest.raises(ValueError, match="1..n without gaps"):
        load_migrations("sqlite", directory)


def test_load_migrations_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_migrations("sqlite", tmp_path / "nowhere")


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_shipped_migrations_load(dialect: str) -> None:
    migrations = load_migrations(dialect)

    assert [migration.version for migration in migrations][0] == 1
    assert all(migration.sql.strip() for migration in migrations)


def test_the_shipped_dialects_have_the_same_migrations() -> None:
    def names(dialect: str) -> list[tuple[int, str]]:
        return [(migration.version, migration.name) for migration in load_migrations(dialect)]

    assert names("sqlite") == names("postgresql")


def test_pending_migrations() -> None:
    migrations = [Migration(1, "a", ""), Migration(2, "b", ""), Migration(3, "c", "")]

    assert pending_migrations(migrations, 0) == migrations
    assert pending_migrations(migrations, 2) == migrations[2:]
    assert pending_migrations(migrations, 3) == []
    with pytest.raises(SchemaTooNew):
        pending_migrations(migrations, 4)


# -- carrying data over -------------------------------------------------------------------

EMPTY_BLOB = {"sqlite": "X''", "postgresql": "''::bytea"}
"""An empty blob literal: the one thing the two databases spell differently here."""


async def _at_schema_version_one(database: FreshDatabase) -> None:
    """Apply migration 1 by hand, with its ledger row, as a runtara of that version did."""
    first = load_migrations(database.dialect)[0]
    await database.execute_script(first.sql)
    await database.execute_script(
        f"CREATE TABLE {LEDGER_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        f" applied_at BIGINT NOT NULL);"
        f" INSERT INTO {LEDGER_TABLE} VALUES ({first.version}, '{first.name}', 0);"
    )


@pytest_twisted.ensureDeferred
async def test_a_database_migrated_from_version_one_equals_a_fresh_one(
    make_database: MakeDatabase, clock: Any
) -> None:
    upgraded = await make_database()
    await _at_schema_version_one(upgraded)
    fresh = await make_database()
    for database in (upgraded, fresh):
        provider = database.provider(clock)
        await provider.start()
        try:
            await provider.migrate()
        finally:
            await provider.close()

    assert await upgraded.schema() == await fresh.schema()


@pytest_twisted.ensureDeferred
async def test_an_instance_asleep_before_the_upgrade_keeps_its_sleep_and_not_the_earlier_ones(
    database: FreshDatabase, clock: Any
) -> None:
    await _at_schema_version_one(database)
    blob = EMPTY_BLOB[database.dialect]
    # Slept "first" (ended), then began "second" and was killed while asleep.
    await database.execute_script(
        "INSERT INTO instances"
        " (instance_id, tenant_id, status, checkpoint_id, created_at, started_at, sleep_until)"
        f" VALUES ('sleepy', 't', 'suspended', 'second', {EPOCH_MS}, {EPOCH_MS},"
        f" {EPOCH_MS + 10_000});"
        " INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at) VALUES"
        f" ('sleepy', 'first', {blob}, {EPOCH_MS}), ('sleepy', 'second', {blob}, {EPOCH_MS});"
        " INSERT INTO events (instance_id, event_type, checkpoint_id, payload, created_at) VALUES"
        f" ('sleepy', 'sleep', 'first', {blob}, {EPOCH_MS}),"
        f" ('sleepy', 'wake', 'first', {blob}, {EPOCH_MS}),"
        f" ('sleepy', 'sleep', 'second', {blob}, {EPOCH_MS});"
    )
    provider = database.provider(clock)
    await provider.start()
    try:
        await provider.migrate()
        await provider.register_instance("sleepy", "t", None)

        first = await provider.begin_sleep("sleepy", "t", "first", b"", 200)
        second = await provider.begin_sleep("sleepy", "t", "second", b"", 10_000)
    finally:
        await provider.close()

    assert first == SleepPlan(wake_at_ms=None)
    assert second == SleepPlan(wake_at_ms=EPOCH_MS + 10_000)
