"""A lock held on PostgreSQL from outside, under live QUIC traffic (issue 13 item 3)."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.e2e.support import registered, remote_error
from tests.pg import connect, create_database, postgres_marks

pytestmark = [pytest.mark.e2e, *postgres_marks()]


@pytest.fixture
def database_url():
    """These tests start their servers on the ``database`` below, never the default."""
    return None


@pytest_twisted.async_yield_fixture
async def database():
    from twisted.internet import reactor

    database = await create_database(reactor)
    yield database
    await database.drop()


def checkpoint(client, instance_id):
    return client.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "cp", "state": b"s"}
    )


@pytest_twisted.ensureDeferred
async def test_a_call_behind_a_lock_held_from_outside_answers_a_retryable_database_error(
    servers, database
):
    from twisted.internet import reactor

    core = await servers.start(database_url=database.dsn, db_lock_timeout_ms=300)
    client = await servers.connect(core)
    locked = await registered(client)
    free = await registered(client)
    operator = await connect(database.dsn, reactor)
    try:
        await operator.runOperation("BEGIN")
        await operator.runOperation(
            f"SELECT 1 FROM instances WHERE instance_id = '{locked}' FOR UPDATE"
        )

        error = await remote_error(checkpoint(client, locked))

        assert (error.code, error.kind, error.retryable) == (
            "CHECKPOINT_ERROR",
            "DATABASE_ERROR",
            True,
        )
        assert error.message == "Database error during 'save_checkpoint': lock not available"
        assert await checkpoint(client, free) == {"found": False, "state": b""}
        health = await client.call("health", {})
        assert health["database"] == "ok"
        await operator.runOperation("ROLLBACK")
        assert await checkpoint(client, locked) == {"found": False, "state": b""}
    finally:
        operator.close()
