"""Every protocol operation as a method, against a real server; verification and tokens."""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted

from runtara.quic.client import CertificateMismatch
from runtara.sdk import (
    Event,
    EventType,
    InstanceClient,
    RemoteError,
    SdkConfig,
    SignalType,
    Status,
    config_from_env,
)
from tests.sdk.support import (
    TENANT,
    WORKFLOWS,
    Process,
    ServerProcess,
    eventually,
    open_quic_clients,
    unique,
)

pytestmark = pytest.mark.e2e


def config_for(server: ServerProcess, **overrides) -> SdkConfig:
    settings = {
        "instance_id": unique("client"),
        "tenant_id": TENANT,
        "server_port": server.port,
        "ca_file": str(server.ca_file),
        "heartbeat_interval": 0,
        "give_up_after": 10.0,
    }
    settings.update(overrides)
    return SdkConfig(**settings)


async def connected(server: ServerProcess, **overrides) -> InstanceClient:
    from twisted.internet import reactor

    return await InstanceClient.connect(reactor, config_for(server, **overrides))


@pytest_twisted.ensureDeferred
async def test_every_operation_through_the_deferred_client(server):
    client = await connected(server)
    try:
        assert client.registration.success and not client.registration.resumed
        assert (await client.health()).database == "ok"
        first = await client.checkpoint("cp", b"one")
        second = await client.checkpoint("cp", b"two")
        assert (first.found, second.found, second.state) == (False, True, b"one")
        assert (await client.get_checkpoint("cp")).state == b"one"
        assert not (await client.get_checkpoint("absent")).found
        slept = await client.sleep(50, "nap")
        assert slept.slept_ms >= 45
        assert (await client.sleep(50, "nap")).slept_ms == 0
        await client.instance_event(EventType.CUSTOM, b"hi", subtype="greeting")
        batch = await client.instance_event_batch([Event(EventType.HEARTBEAT)] * 2)
        assert batch.accepted == 2 and batch.errors == ()
        await client.retry_attempt("cp", 1, "boom")
        await server.send_signal(client.instance_id, "pause")
        polled = await client.poll_signals()
        assert polled.signal.signal_type is SignalType.PAUSE
        ack = await client.signal_ack(SignalType.PAUSE)
        assert ack.success and ack.status is Status.SUSPENDED
        status = await client.get_instance_status()
        assert status.status is Status.SUSPENDED and status.checkpoint_id == "nap"
        assert (await client.register_instance()).status is Status.RUNNING
        unknown = await client.get_instance_status("nobody")
        assert unknown.status is Status.UNKNOWN
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_every_operation_through_the_blocking_client(server, tmp_path, processes):
    instance_id = unique("blocking")
    log = tmp_path / "client_ops.log"
    process = Process(
        [sys.executable, str(WORKFLOWS / "client_ops.py")], server.workflow_env(instance_id), log
    )
    processes.append(process)
    assert await process.exited() == 0, process.log()
    answers = json.loads(log.read_text().splitlines()[-1])
    assert answers["registration"]["success"] is True
    assert answers["registration"]["replay_index"] == {"checkpoint_ids": [], "retry_attempts": {}}
    assert answers["health"]["database"] == "ok"
    assert answers["first_checkpoint"]["found"] is False
    assert answers["second_checkpoint"] == {
        "found": True,
        "state": "one",
        "pending_signal": None,
        "custom_signal": None,
        "last_attempt": None,
    }
    assert answers["get_checkpoint"]["state"] == "one"
    assert answers["missing_checkpoint"]["found"] is False
    assert answers["sleep"]["slept_ms"] >= 45
    assert answers["batch"]["accepted"] == 2
    assert answers["batch"]["errors"][0]["kind"] == "INVALID_INSTANCE_STATE"
    assert answers["signal_ack"]["success"] is False
    assert answers["status"]["status"] == "completed"
    assert answers["status"]["output"] == "out"
    assert answers["register_again"]["success"] is False
    assert "already completed" in answers["register_again"]["error"]


@pytest_twisted.ensureDeferred
async def test_heartbeats_are_sent_in_the_background(server):
    client = await connected(server, heartbeat_interval=0.1)
    client.start_heartbeats()
    try:
        await eventually(
            lambda: server.events(client.instance_id, "heartbeat"), "a heartbeat event", 5
        )
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_pinned_fingerprint_replaces_the_ca(server):
    client = await connected(server, ca_file=None, server_fingerprint=server.fingerprint)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_wrong_fingerprint_fails_at_once(server):
    with pytest.raises(CertificateMismatch):
        await connected(server, ca_file=None, server_fingerprint=":".join(["00"] * 32))


@pytest_twisted.ensureDeferred
async def test_verification_can_be_skipped_explicitly(server):
    client = await connected(server, ca_file=None, skip_cert_verification=True)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_the_server_is_verified_by_default(server):
    from twisted.internet import reactor

    environ = {
        "RUNTARA_INSTANCE_ID": unique("client"),
        "RUNTARA_TENANT_ID": TENANT,
        "RUNTARA_SERVER_ADDR": server.address,
    }
    config = config_from_env(environ, heartbeat_interval=0)
    with pytest.raises(Exception, match="certificate"):
        await InstanceClient.connect(reactor, config)


@pytest_twisted.async_yield_fixture
async def token_server(tmp_path, processes):
    server = ServerProcess(tmp_path / "tokens", processes, ("--auth-tokens", f"{TENANT}=s3cret"))
    await server.start()
    yield server


@pytest_twisted.ensureDeferred
async def test_the_tenant_token_is_sent(token_server):
    client = await connected(token_server, auth_token="s3cret")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_fails_without_retrying(token_server):
    from twisted.internet import reactor

    open_before = set(open_quic_clients(reactor))
    with pytest.raises(RemoteError) as caught:
        await connected(token_server, auth_token="guess")
    assert caught.value.kind == "UNAUTHENTICATED"
    assert set(open_quic_clients(reactor)) == open_before, "the refused connection's port is open"
