"""PROTOCOL.md 6.2 and 6.3: save-or-return checkpoints and read-only reads."""

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults

from tests.e2e.support import registered, remote_error

pytestmark = pytest.mark.e2e


def checkpoint(client, instance_id, checkpoint_id, state):
    return client.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": checkpoint_id, "state": state}
    )


@pytest_twisted.ensureDeferred
async def test_first_call_saves_and_later_calls_return_the_first_state(connect):
    client = await connect()
    instance_id = await registered(client)
    assert await checkpoint(client, instance_id, "step-1", b"first") == {
        "found": False,
        "state": b"",
    }
    assert await checkpoint(client, instance_id, "step-1", b"second") == {
        "found": True,
        "state": b"first",
    }
    status = await client.call("get_instance_status", {"instance_id": instance_id})
    assert status["checkpoint_id"] == "step-1"


@pytest_twisted.ensureDeferred
async def test_concurrent_first_checkpoints_store_one_state(connect):
    clients = [await connect() for _ in range(3)]
    instance_id = await registered(clients[0])
    for client in clients[1:]:
        await registered(client)
    calls = [
        checkpoint(clients[index % 3], instance_id, "race", f"candidate-{index}".encode())
        for index in range(24)
    ]
    answers = await gatherResults([ensureDeferred(call) for call in calls])
    saved = [answer for answer in answers if not answer["found"]]
    assert len(saved) == 1
    returned = {answer["state"] for answer in answers if answer["found"]}
    assert len(returned) == 1
    stored = await clients[0].call(
        "get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "race"}
    )
    assert returned == {stored["state"]}
    winner = answers.index(saved[0])
    assert stored["state"] == f"candidate-{winner}".encode()


@pytest.mark.parametrize(
    "state",
    [b"", bytes(range(256)) * 4, b"\x00" * 1024 * 1024, bytes(range(251)) * 4178],
    ids=["empty", "all-bytes", "1MB-zeros", "1MB-pattern"],
)
@pytest_twisted.ensureDeferred
async def test_states_round_trip_exactly(connect, state):
    client = await connect()
    instance_id = await registered(client)
    await checkpoint(client, instance_id, "blob", state)
    replay = await checkpoint(client, instance_id, "blob", b"ignored")
    assert replay == {"found": True, "state": state}
    read = await client.call(
        "get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "blob"}
    )
    assert read == {"found": True, "state": state}


@pytest_twisted.ensureDeferred
async def test_get_checkpoint_reads_without_writing_in_any_status(connect):
    client = await connect()
    instance_id = await registered(client)
    missing = await client.call(
        "get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "later"}
    )
    assert missing == {"found": False, "state": b""}
    await checkpoint(client, instance_id, "a", b"kept")
    await client.call(
        "instance_event",
        {"instance_id": instance_id, "event_type": "failed", "payload": b"boom", "timestamp_ms": 1},
    )
    read = await client.call("get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "a"})
    assert read == {"found": True, "state": b"kept"}
    status = await client.call("get_instance_status", {"instance_id": instance_id})
    assert status["checkpoint_id"] == "a", "reading 'later' did not make it current"


@pytest_twisted.ensureDeferred
async def test_checkpoints_need_a_running_instance(connect):
    client = await connect()
    instance_id = await registered(client)
    await client.call(
        "instance_event",
        {"instance_id": instance_id, "event_type": "suspended", "payload": b"", "timestamp_ms": 1},
    )
    error = await remote_error(checkpoint(client, instance_id, "a", b""))
    assert (error.code, error.kind, error.retryable) == (
        "CHECKPOINT_ERROR",
        "INVALID_INSTANCE_STATE",
        False,
    )
    assert error.message == (
        f"Instance '{instance_id}' is in invalid state: expected 'running', got 'suspended'"
    )


@pytest_twisted.ensureDeferred
async def test_a_state_of_the_wrong_type_changes_nothing(connect):
    client = await connect()
    instance_id = await registered(client)
    error = await remote_error(checkpoint(client, instance_id, "a", "text, not bin"))
    assert (error.code, error.kind) == ("CHECKPOINT_ERROR", "VALIDATION_ERROR")
    assert error.message == "Validation error for 'state': expected bin, got str"
    read = await client.call("get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "a"})
    assert read["found"] is False


@pytest_twisted.ensureDeferred
async def test_retry_attempts_are_not_checkpoints(connect):
    client = await connect()
    instance_id = await registered(client)
    fields = {
        "instance_id": instance_id,
        "checkpoint_id": "flaky",
        "attempt_number": 1,
        "timestamp_ms": 1_700_000_000_000,
        "error_message": "timeout",
    }
    assert await client.call("retry_attempt", fields) == {"success": True}
    assert await client.call("retry_attempt", fields) == {"success": True}
    assert await checkpoint(client, instance_id, "flaky", b"done") == {"found": False, "state": b""}
    error = await remote_error(client.call("retry_attempt", {**fields, "attempt_number": 0}))
    assert (error.code, error.kind) == ("RETRY_ATTEMPT_ERROR", "VALIDATION_ERROR")
