"""Exactly once at the wire: repeated calls after lost answers change nothing twice."""

import pytest
import pytest_twisted

from runtara.model import EventType, SignalType
from tests.e2e.support import persistence_of, registered, remote_error, unique

pytestmark = pytest.mark.e2e


async def started_events(core, instance_id):
    events = await persistence_of(core).list_events(instance_id, EventType.STARTED, None, 100, 0)
    return len(events)


@pytest_twisted.ensureDeferred
async def test_a_registration_repeated_after_a_lost_answer_writes_one_started_event(connect, core):
    instance_id = unique()
    fields = {"instance_id": instance_id, "tenant_id": "tenant-a", "run_id": "run-1"}
    first = await connect()
    assert (await first.call("register_instance", fields))["success"]
    # The answer was lost with the connection: the client registers again on a new one.
    second = await connect()

    again = await second.call("register_instance", fields)

    assert again == {"success": True, "error": "", "status": "running", "resumed": False}
    assert await started_events(core, instance_id) == 1
    next_run = await second.call("register_instance", {**fields, "run_id": "run-2"})
    assert next_run["success"]
    assert await started_events(core, instance_id) == 2


@pytest_twisted.ensureDeferred
async def test_a_run_id_must_be_a_non_empty_string(connect):
    client = await connect()
    fields = {"instance_id": unique(), "tenant_id": "tenant-a"}

    empty = await client.call("register_instance", {**fields, "run_id": ""})

    assert empty == {
        "success": False,
        "error": "Validation error for 'run_id': must not be empty",
        "status": "unknown",
        "resumed": False,
    }


@pytest_twisted.ensureDeferred
async def test_an_idempotent_ack_repeated_after_a_lost_answer_pauses_once(connect, core):
    instance_id = unique()
    fields = {"instance_id": instance_id, "tenant_id": "tenant-a", "run_id": "run-1"}
    ack = {"instance_id": instance_id, "signal_type": "pause", "acknowledged": True}
    first = await connect()
    await first.call("register_instance", fields)
    await persistence_of(core).send_signal(instance_id, SignalType.PAUSE, b"")
    assert await first.call("signal_ack", {**ack, "idempotent": True}) == {
        "success": True,
        "status": "suspended",
    }
    # The answer was lost with the connection: a new one registers again and repeats.
    second = await connect()
    assert (await second.call("register_instance", fields))["status"] == "running"

    plain = await second.call("signal_ack", ack)
    repeated = await second.call("signal_ack", {**ack, "idempotent": True})

    assert plain == {"success": False, "status": "running"}
    assert repeated == {"success": True, "status": "suspended"}
    status = await second.call("get_instance_status", {"instance_id": instance_id})
    assert status["status"] == "suspended"


@pytest_twisted.ensureDeferred
async def test_a_peeked_custom_signal_is_consumed_by_the_checkpoint_that_receives_it(connect, core):
    client = await connect()
    instance_id = await registered(client)
    await persistence_of(core).send_custom_signal(instance_id, "approval", b"yes")
    peek = {"instance_id": instance_id, "checkpoint_id": "approval", "peek": True}

    first = await client.call("poll_signals", peek)
    again = await client.call("poll_signals", peek)

    signal_id = first["custom_signal"]["signal_id"]
    assert (
        first
        == again
        == {
            "custom_signal": {
                "checkpoint_id": "approval",
                "payload": b"yes",
                "signal_id": signal_id,
            }
        }
    )
    save = {
        "instance_id": instance_id,
        "checkpoint_id": "approval#signal",
        "state": b"yes",
        "receive_signal": {"checkpoint_id": "approval", "signal_id": signal_id},
    }
    assert await client.call("checkpoint", save) == {"found": False, "state": b""}
    assert await client.call("poll_signals", peek) == {}
    # The answer was lost: the repeat returns the stored state and consumes nothing more.
    assert await client.call("checkpoint", save) == {"found": True, "state": b"yes"}


@pytest.mark.parametrize(
    "receive_signal, field, problem",
    [
        (b"approval", "receive_signal", "expected map, got bin"),
        ({"signal_id": 1}, "receive_signal.checkpoint_id", "is required"),
        (
            {"checkpoint_id": "approval", "signal_id": "1"},
            "receive_signal.signal_id",
            "expected int",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_malformed_receive_signal_is_a_validation_error(
    connect, receive_signal, field, problem
):
    client = await connect()
    instance_id = await registered(client)
    save = {
        "instance_id": instance_id,
        "checkpoint_id": "approval#signal",
        "state": b"",
        "receive_signal": receive_signal,
    }

    error = await remote_error(client.call("checkpoint", save))

    assert (error.code, error.kind) == ("CHECKPOINT_ERROR", "VALIDATION_ERROR")
    assert error.message.startswith(f"Validation error for '{field}': {problem}")


@pytest_twisted.ensureDeferred
async def test_a_registration_asked_for_it_answers_the_replay_index(connect):
    client = await connect()
    instance_id = unique()
    fields = {"instance_id": instance_id, "tenant_id": "tenant-a", "replay_index": True}
    fresh = await client.call("register_instance", fields)
    for checkpoint_id in ("b", "a"):
        await client.call(
            "checkpoint", {"instance_id": instance_id, "checkpoint_id": checkpoint_id, "state": b""}
        )
    for attempt_number, error_message in ((1, "boom"), (2, None)):
        attempt = {"instance_id": instance_id, "checkpoint_id": "c", "timestamp_ms": 0}
        attempt.update(attempt_number=attempt_number, error_message=error_message)
        await client.call("retry_attempt", attempt)

    resumed = await client.call("register_instance", fields)

    assert fresh == {
        "success": True,
        "error": "",
        "status": "running",
        "resumed": False,
        "replay_index": {"checkpoint_ids": [], "retry_attempts": {}},
    }
    assert resumed["replay_index"] == {
        "checkpoint_ids": ["a", "b"],
        "retry_attempts": {"c": {"attempt_number": 2}},
    }
    read = {"instance_id": instance_id, "checkpoint_id": "c", "last_attempt": True}
    assert await client.call("get_checkpoint", read) == {
        "found": False,
        "state": b"",
        "last_attempt": {"attempt_number": 2},
    }
    assert await client.call("get_checkpoint", {**read, "checkpoint_id": "a"}) == {
        "found": True,
        "state": b"",
    }
