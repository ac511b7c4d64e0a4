"""PostgreSQL lock and statement timeouts: an operation never waits forever.

A lock held from outside (an operator's session, a stuck migration) used to
make every operation on that instance wait for it without end. These run
against the server of ``RUNTARA_TEST_POSTGRES_URL``, each on a database of
its own; connections run on the real reactor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from runtara.errors import DatabaseError
from runtara.persistence.migrations import load_migrations
from runtara.persistence.postgresql import PostgreSQLPersistence
from runtara.persistence.transaction import POSTGRESQL
from tests.persistence.support import EPOCH_S
from tests.pg import PostgreSQLDatabase, connect, create_database, require_server

pytestmark = pytest.mark.postgres

TENANT = "tenant-a"
GUARD_S = 10.0
"""How long a test waits for a call that should fail within a fraction of a second."""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def pg_server() -> str:
    """The server URL; skips here, synchronously, when there is no server."""
    return require_server()


@pytest_twisted.async_yield_fixture
async def pg_database(pg_server: str) -> AsyncIterator[PostgreSQLDatabase]:
    database = await create_database(_reactor())
    yield database
    await database.drop()


@pytest_twisted.async_yield_fixture
async def outsider(pg_database: PostgreSQLDatabase) -> AsyncIterator[Any]:
    """A session of its own on the database, like an operator's psql."""
    connection = await connect(pg_database.dsn, _reactor())
    yield connection
    connection.close()


async def provider_on(
    database: PostgreSQLDatabase, *, migrate: bool = True, **timeouts: int
) -> PostgreSQLPersistence:
    clock = task.Clock()
    clock.advance(EPOCH_S)
    provider = PostgreSQLPersistence(
        database.dsn, clock, pool_size=2, reactor=_reactor(), **timeouts
    )
    await provider.start()
    if migrate:
        await provider.migrate()
    return provider


async def guarded(deferred: Any) -> Any:
    """``deferred``'s result, or ``TimeoutError`` after ``GUARD_S`` (it waits forever)."""
    return await deferred.addTimeout(GUARD_S, _reactor())


@pytest_twisted.ensureDeferred
async def test_an_operation_behind_a_lock_held_from_outside_fails_retryable_in_time(
    pg_database: PostgreSQLDatabase, outsider: Any
) -> None:
    provider = await provider_on(pg_database, lock_timeout_ms=200)
    try:
        for instance_id in ("locked", "free"):
            await provider.register_instance(instance_id, TENANT, None)
        await outsider.runOperation("BEGIN")
        await outsider.runOperation(
            "SELECT 1 FROM instances WHERE instance_id = 'locked' FOR UPDATE"
        )
        started = _reactor().seconds()

        with pytest.raises(DatabaseError) as caught:
            await guarded(provider.save_checkpoint("locked", TENANT, "cp", b"state"))

        assert _reactor().seconds() - started < GUARD_S / 2
        assert caught.value.retryable
        assert caught.value.message == (
            "Database error during 'save_checkpoint': lock not available"
        )
        free = await guarded(provider.save_checkpoint("free", TENANT, "cp", b"state"))
        assert free.found is False
        await outsider.runOperation("ROLLBACK")
        after = await guarded(provider.save_checkpoint("locked", TENANT, "cp", b"state"))
        assert after.found is False
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_a_statement_that_runs_too_long_is_cancelled_retryable(
    pg_database: PostgreSQLDatabase,
) -> None:
    provider = await provider_on(pg_database, migrate=False, statement_timeout_ms=100)

    async def slow(tx: Any) -> None:
        await tx.rows("SELECT pg_sleep(5)")

    try:
        with pytest.raises(DatabaseError) as caught:
            await guarded(provider.engine.transact("slow", False, slow, (), 0))
        assert caught.value.retryable
        assert caught.value.details == "query cancelled"
        assert await provider.check_health() is True
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_migrations_wait_for_each_other_beyond_the_lock_timeout(
    pg_database: PostgreSQLDatabase, outsider: Any
) -> None:
    # Another server's migration holds the migration lock for a while.
    lock_key = POSTGRESQL.migration_lock.split("(")[1].rstrip(")")
    await outsider.runOperation(f"SELECT pg_advisory_lock({lock_key})")
    provider = await provider_on(pg_database, migrate=False, lock_timeout_ms=100)
    try:
        migrating = provider.migrate()
        await task.deferLater(_reactor(), 0.5, lambda: None)
        await outsider.runOperation(f"SELECT pg_advisory_unlock({lock_key})")

        assert await guarded(migrating) == load_migrations("postgresql")[-1].version
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_the_timeouts_are_settings_of_every_pooled_session(
    pg_database: PostgreSQLDatabase,
) -> None:
    provider = await provider_on(
        pg_database, migrate=False, lock_timeout_ms=1234, statement_timeout_ms=5678
    )

    async def settings(tx: Any) -> list[Any]:
        return await tx.rows(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        )

    try:
        shown = [await provider.engine.transact("settings", False, settings, (), 0)]
        shown.append(await provider.engine.transact("settings", False, settings, (), 0))
    finally:
        await provider.close()
    assert shown == [[("1234ms", "5678ms")]] * 2
