"""Durability across server restarts, and shutdown behaviour."""

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

from tests.e2e.support import registered, wait_for_status

pytestmark = pytest.mark.e2e


@pytest_twisted.ensureDeferred
async def test_data_and_certificate_survive_a_restart(servers):
    core = await servers.start()
    fingerprint = core.fingerprint
    client = await servers.connect(core)
    instance_id = await registered(client)
    await client.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "a", "state": b"\x00kept"}
    )
    await client.close()
    await servers.stop(core)

    again = await servers.start()
    assert again.fingerprint == fingerprint
    client = await servers.connect(again)
    answer = await client.call(
        "register_instance",
        {"instance_id": instance_id, "tenant_id": "tenant-a", "checkpoint_id": "a"},
    )
    assert answer["resumed"] is True
    replay = await client.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "a", "state": b"new"}
    )
    assert replay == {"found": True, "state": b"\x00kept"}


@pytest_twisted.ensureDeferred
async def test_stopping_closes_connections_with_an_application_close(servers):
    core = await servers.start()
    client = await servers.connect(core)
    instance_id = await registered(client)
    sleeping = ensureDeferred(
        client.call(
            "sleep",
            {
                "instance_id": instance_id,
                "checkpoint_id": "nap",
                "duration_ms": 60_000,
                "state": b"",
            },
        )
    )
    sleeping.addErrback(lambda failure: None)
    watcher = await servers.connect(core)
    await registered(watcher)
    await wait_for_status(watcher, instance_id, "suspended")
    await servers.stop(core)
    reason = await client.connection.when_closed()
    assert "shutting down" in str(reason)

    again = await servers.start()
    watcher = await servers.connect(again)
    await registered(watcher)
    status = await watcher.call("get_instance_status", {"instance_id": instance_id})
    assert status["status"] == "suspended", "a sleep cut by shutdown stays due for waking"
    assert status["sleep_until_ms"] > 0
