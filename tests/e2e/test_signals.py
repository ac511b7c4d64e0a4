"""PROTOCOL.md 6.2, 6.8, 6.9 and 7: signals sent from outside, seen and acknowledged."""

import pytest
import pytest_twisted

from runtara.model import SignalType
from tests.e2e.support import persistence_of, registered, remote_error

pytestmark = pytest.mark.e2e


def checkpoint(client, instance_id, checkpoint_id, state=b"s"):
    return client.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": checkpoint_id, "state": state}
    )


def ack(client, instance_id, signal_type, acknowledged=True):
    return client.call(
        "signal_ack",
        {"instance_id": instance_id, "signal_type": signal_type, "acknowledged": acknowledged},
    )


@pytest_twisted.ensureDeferred
async def test_a_cancel_is_reported_until_acknowledged_then_cancels(connect, core):
    client = await connect()
    instance_id = await registered(client)
    await persistence_of(core).send_signal(instance_id, SignalType.CANCEL, b"operator")
    for checkpoint_id in ("a", "b"):
        answer = await checkpoint(client, instance_id, checkpoint_id)
        assert answer["pending_signal"] == {"signal_type": "cancel", "payload": b"operator"}
    polled = await client.call("poll_signals", {"instance_id": instance_id})
    assert polled == {"signal": {"signal_type": "cancel", "payload": b"operator"}}

    assert await ack(client, instance_id, "pause") == {"success": False, "status": "running"}
    assert await ack(client, instance_id, "cancel", False) == {
        "success": False,
        "status": "running",
    }
    assert await ack(client, instance_id, "cancel") == {"success": True, "status": "cancelled"}
    status = await client.call("get_instance_status", {"instance_id": instance_id})
    assert status["status"] == "cancelled" and status["finished_at_ms"] > 0
    error = await remote_error(checkpoint(client, instance_id, "c"))
    assert error.kind == "INVALID_INSTANCE_STATE"
    assert await client.call("poll_signals", {"instance_id": instance_id}) == {}


@pytest_twisted.ensureDeferred
async def test_pause_then_resume(connect, core):
    client = await connect()
    instance_id = await registered(client)
    persistence = persistence_of(core)
    await persistence.send_signal(instance_id, SignalType.PAUSE, b"")
    answer = await checkpoint(client, instance_id, "a")
    assert answer["pending_signal"]["signal_type"] == "pause"
    assert await ack(client, instance_id, "pause") == {"success": True, "status": "suspended"}
    assert await client.call("poll_signals", {"instance_id": instance_id}) == {}
    await persistence.send_signal(instance_id, SignalType.RESUME, b"")
    polled = await client.call("poll_signals", {"instance_id": instance_id})
    assert polled["signal"]["signal_type"] == "resume"
    assert await ack(client, instance_id, "resume") == {"success": True, "status": "running"}


@pytest_twisted.ensureDeferred
async def test_a_newer_signal_replaces_the_older_one(connect, core):
    client = await connect()
    instance_id = await registered(client)
    persistence = persistence_of(core)
    await persistence.send_signal(instance_id, SignalType.PAUSE, b"1")
    await persistence.send_signal(instance_id, SignalType.CANCEL, b"2")
    answer = await checkpoint(client, instance_id, "a")
    assert answer["pending_signal"] == {"signal_type": "cancel", "payload": b"2"}


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_waits_for_its_checkpoint_and_is_consumed(connect, core):
    client = await connect()
    instance_id = await registered(client)
    await persistence_of(core).send_custom_signal(instance_id, "approval", b"approved")
    other = await checkpoint(client, instance_id, "before")
    assert "custom_signal" not in other
    delivered = await checkpoint(client, instance_id, "approval")
    assert delivered["custom_signal"] == {"checkpoint_id": "approval", "payload": b"approved"}
    again = await checkpoint(client, instance_id, "approval")
    assert "custom_signal" not in again


@pytest_twisted.ensureDeferred
async def test_poll_signals_consumes_a_custom_signal_only_for_its_checkpoint(connect, core):
    client = await connect()
    instance_id = await registered(client)
    await persistence_of(core).send_custom_signal(instance_id, "gate", b"go")
    assert await client.call("poll_signals", {"instance_id": instance_id}) == {}
    assert (
        await client.call("poll_signals", {"instance_id": instance_id, "checkpoint_id": "other"})
        == {}
    )
    polled = await client.call(
        "poll_signals", {"instance_id": instance_id, "checkpoint_id": "gate"}
    )
    assert polled == {"custom_signal": {"checkpoint_id": "gate", "payload": b"go"}}
    assert (
        await client.call("poll_signals", {"instance_id": instance_id, "checkpoint_id": "gate"})
        == {}
    )


@pytest_twisted.ensureDeferred
async def test_ack_validates_its_fields(connect):
    client = await connect()
    instance_id = await registered(client)
    error = await remote_error(ack(client, instance_id, "stop"))
    assert (error.code, error.kind) == ("SIGNAL_ACK_ERROR", "VALIDATION_ERROR")
    error = await remote_error(
        client.call("signal_ack", {"instance_id": instance_id, "signal_type": "cancel"})
    )
    assert "'acknowledged'" in error.message
