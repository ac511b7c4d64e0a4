"""PROTOCOL.md 6.5-6.7: events, status changes, batches, status reads."""

import pytest
import pytest_twisted

from tests.e2e.support import persistence_of, registered, remote_error

pytestmark = pytest.mark.e2e


def event(instance_id, event_type, payload=b"", **extra):
    return {
        "instance_id": instance_id,
        "event_type": event_type,
        "payload": payload,
        "timestamp_ms": 1_700_000_000_123,
        **extra,
    }


async def status_of(client, instance_id):
    return await client.call("get_instance_status", {"instance_id": instance_id})


@pytest_twisted.ensureDeferred
async def test_heartbeat_and_custom_events_change_no_status(connect, core):
    client = await connect()
    instance_id = await registered(client)
    assert await client.call("instance_event", event(instance_id, "heartbeat")) == {"success": True}
    await client.call(
        "instance_event", event(instance_id, "custom", b"{}", subtype="progress", checkpoint_id="a")
    )
    assert (await status_of(client, instance_id))["status"] == "running"
    [custom] = await persistence_of(core).list_events(instance_id, None, "progress", 10, 0)
    assert (custom.event_type.value, custom.checkpoint_id, custom.payload) == ("custom", "a", b"{}")
    assert custom.client_ts_ms == 1_700_000_000_123


@pytest_twisted.ensureDeferred
async def test_completed_stores_the_output(connect):
    client = await connect()
    instance_id = await registered(client)
    await client.call("instance_event", event(instance_id, "completed", b"\x00result"))
    status = await status_of(client, instance_id)
    assert status["status"] == "completed"
    assert status["output"] == b"\x00result"
    assert status["finished_at_ms"] >= status["started_at_ms"] > 0


@pytest.mark.parametrize(
    "payload, error",
    [
        (b"boom: disk full", "boom: disk full"),
        (b"", "Unknown error"),
        (b"\xff\xfe\xfd", "Unknown error (binary payload)"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failed_stores_the_error_text(connect, payload, error):
    client = await connect()
    instance_id = await registered(client)
    await client.call("instance_event", event(instance_id, "failed", payload))
    status = await status_of(client, instance_id)
    assert (status["status"], status["error"]) == ("failed", error)
    assert status["finished_at_ms"] > 0


@pytest_twisted.ensureDeferred
async def test_suspended_event_suspends(connect):
    client = await connect()
    instance_id = await registered(client)
    await client.call("instance_event", event(instance_id, "suspended"))
    assert (await status_of(client, instance_id))["status"] == "suspended"


@pytest_twisted.ensureDeferred
async def test_terminal_instances_accept_only_heartbeat_and_custom(connect):
    client = await connect()
    instance_id = await registered(client)
    await client.call("instance_event", event(instance_id, "completed", b"done"))
    await client.call("instance_event", event(instance_id, "heartbeat"))
    await client.call("instance_event", event(instance_id, "custom", subtype="late"))
    for event_type in ("completed", "failed", "suspended"):
        error = await remote_error(client.call("instance_event", event(instance_id, event_type)))
        assert (error.code, error.kind) == ("INSTANCE_EVENT_ERROR", "INVALID_INSTANCE_STATE")
    status = await status_of(client, instance_id)
    assert (status["status"], status["output"]) == ("completed", b"done")


@pytest_twisted.ensureDeferred
async def test_server_only_event_types_are_refused(connect):
    client = await connect()
    instance_id = await registered(client)
    error = await remote_error(client.call("instance_event", event(instance_id, "wake")))
    assert (error.code, error.kind) == ("INSTANCE_EVENT_ERROR", "VALIDATION_ERROR")
    assert "'event_type'" in error.message


@pytest_twisted.ensureDeferred
async def test_a_batch_records_each_event_on_its_own(connect, core):
    client = await connect()
    instance_id = await registered(client)
    answer = await client.call(
        "instance_event_batch",
        {
            "events": [
                event(instance_id, "heartbeat"),
                event("missing", "heartbeat"),
                event(instance_id, "bogus"),
                "not a map",
                event(instance_id, "custom", subtype="s"),
            ]
        },
    )
    assert answer["accepted"] == 2
    assert [(e["index"], e["kind"]) for e in answer["errors"]] == [
        (1, "INSTANCE_NOT_FOUND"),
        (2, "VALIDATION_ERROR"),
        (3, "VALIDATION_ERROR"),
    ]
    assert answer["errors"][0]["message"] == "Instance 'missing' not found"
    recorded = await persistence_of(core).list_events(instance_id, None, None, 10, 0)
    assert [e.event_type.value for e in recorded][:2] == ["custom", "heartbeat"]


@pytest.mark.parametrize("events", ["not-a-list", None], ids=["string", "missing"])
@pytest_twisted.ensureDeferred
async def test_a_batch_that_is_not_a_list_is_an_error(connect, events):
    client = await connect()
    await registered(client)
    error = await remote_error(client.call("instance_event_batch", {"events": events}))
    assert (error.code, error.kind) == ("INSTANCE_EVENT_ERROR", "VALIDATION_ERROR")


@pytest_twisted.ensureDeferred
async def test_an_oversized_batch_records_nothing(connect, core):
    client = await connect()
    instance_id = await registered(client)
    before = await persistence_of(core).list_events(instance_id, None, None, 2000, 0)
    error = await remote_error(
        client.call("instance_event_batch", {"events": [event(instance_id, "heartbeat")] * 1001})
    )
    assert (error.code, error.kind) == ("INSTANCE_EVENT_ERROR", "VALIDATION_ERROR")
    after = await persistence_of(core).list_events(instance_id, None, None, 2000, 0)
    assert len(after) == len(before)
    answer = await client.call(
        "instance_event_batch", {"events": [event(instance_id, "heartbeat")] * 1000}
    )
    assert answer == {"accepted": 1000, "errors": []}


@pytest_twisted.ensureDeferred
async def test_status_of_an_unknown_instance_is_unknown(connect):
    client = await connect()
    await registered(client)
    status = await status_of(client, "never-registered")
    assert status["status"] == "unknown"
    assert status["error"] == "Instance not found"
    assert status["started_at_ms"] == 0
