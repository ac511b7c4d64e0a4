"""PROTOCOL.md 6.4: durable sleep held by the server, replay-safe."""

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred

from tests.e2e.support import persistence_of, registered, remote_error, wait_for_status

pytestmark = pytest.mark.e2e


def sleep(client, instance_id, checkpoint_id, duration_ms, state=b"s"):
    return ensureDeferred(
        client.call(
            "sleep",
            {
                "instance_id": instance_id,
                "checkpoint_id": checkpoint_id,
                "duration_ms": duration_ms,
                "state": state,
            },
        )
    )


async def status_of(client, instance_id):
    return await client.call("get_instance_status", {"instance_id": instance_id})


@pytest_twisted.ensureDeferred
async def test_a_sleep_suspends_then_wakes_and_answers(connect, core):
    client = await connect()
    watcher = await connect()
    await registered(watcher)
    instance_id = await registered(client)
    sleeping = sleep(client, instance_id, "nap", 300, b"before-nap")
    suspended = await wait_for_status(watcher, instance_id, "suspended")
    answer = await sleeping
    assert answer["slept_ms"] >= 300 - 5
    assert answer["wake_at_ms"] == suspended["sleep_until_ms"]
    status = await status_of(client, instance_id)
    assert status["status"] == "running"
    assert "sleep_until_ms" not in status
    events = await persistence_of(core).list_events(instance_id, None, None, 10, 0)
    assert [event.event_type.value for event in events][:2] == ["wake", "sleep"]
    saved = await client.call(
        "get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "nap"}
    )
    assert saved == {"found": True, "state": b"before-nap"}


@pytest_twisted.ensureDeferred
async def test_a_finished_sleep_is_never_slept_twice(connect):
    client = await connect()
    instance_id = await registered(client)
    await sleep(client, instance_id, "nap", 10)
    replay = await sleep(client, instance_id, "nap", 60_000)
    assert replay["slept_ms"] == 0
    assert (await status_of(client, instance_id))["status"] == "running"


@pytest_twisted.ensureDeferred
async def test_an_interrupted_sleep_wakes_at_the_original_time(connect):
    from twisted.internet import reactor

    first = await connect()
    watcher = await connect()
    await registered(watcher)
    instance_id = await registered(first)
    interrupted = sleep(first, instance_id, "nap", 1500)
    interrupted.addErrback(lambda failure: None)
    suspended = await wait_for_status(watcher, instance_id, "suspended")
    wake_at_ms = suspended["sleep_until_ms"]
    await first.close()
    status = await status_of(watcher, instance_id)
    assert status["status"] == "suspended", "closing the connection keeps it suspended"
    assert status["sleep_until_ms"] == wake_at_ms

    second = await connect()
    await registered(second, instance_id)
    status = await status_of(second, instance_id)
    assert status["sleep_until_ms"] == wake_at_ms, "register leaves sleep_until alone"
    answer = await sleep(second, instance_id, "nap", 1500)
    assert answer["wake_at_ms"] == wake_at_ms
    assert answer["slept_ms"] < 1500
    assert reactor.seconds() * 1000 >= wake_at_ms - 5


@pytest_twisted.ensureDeferred
async def test_sleep_needs_a_running_instance_and_valid_fields(connect):
    client = await connect()
    instance_id = await registered(client)
    error = await remote_error(sleep(client, instance_id, "nap", -1))
    assert (error.code, error.kind) == ("SLEEP_ERROR", "VALIDATION_ERROR")
    await client.call(
        "instance_event",
        {"instance_id": instance_id, "event_type": "completed", "payload": b"", "timestamp_ms": 1},
    )
    error = await remote_error(sleep(client, instance_id, "nap", 1))
    assert (error.code, error.kind) == ("SLEEP_ERROR", "INVALID_INSTANCE_STATE")


@pytest_twisted.ensureDeferred
async def test_other_calls_proceed_while_a_sleep_is_held(connect):
    client = await connect()
    sleeper_id = await registered(client)
    other_id = await registered(client)
    sleeping = sleep(client, sleeper_id, "nap", 400)
    answer = await client.call(
        "checkpoint", {"instance_id": other_id, "checkpoint_id": "a", "state": b"x"}
    )
    assert answer["found"] is False
    assert not sleeping.called
    done: Deferred = sleeping
    assert (await done)["slept_ms"] >= 395
