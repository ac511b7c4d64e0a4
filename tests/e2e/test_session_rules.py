"""PROTOCOL.md section 5 and 6.1: registration, tenants, tokens, the instance limit."""

import pytest
import pytest_twisted

from runtara.client import RemoteError
from tests.e2e.support import registered, remote_error, unique

pytestmark = pytest.mark.e2e

INSTANCE_OPERATIONS = {
    "checkpoint": ("CHECKPOINT_ERROR", {"checkpoint_id": "a", "state": b""}),
    "get_checkpoint": ("GET_CHECKPOINT_ERROR", {"checkpoint_id": "a"}),
    "sleep": ("SLEEP_ERROR", {"checkpoint_id": "a", "state": b"", "duration_ms": 1}),
    "instance_event": ("INSTANCE_EVENT_ERROR", {"event_type": "heartbeat", "payload": b""}),
    "instance_event_batch": ("INSTANCE_EVENT_ERROR", {"events": []}),
    "get_instance_status": ("GET_INSTANCE_STATUS_ERROR", {}),
    "poll_signals": ("POLL_SIGNALS_ERROR", {}),
    "signal_ack": ("SIGNAL_ACK_ERROR", {"signal_type": "cancel", "acknowledged": True}),
    "retry_attempt": (
        "RETRY_ATTEMPT_ERROR",
        {"checkpoint_id": "a", "attempt_number": 1, "timestamp_ms": 1},
    ),
}


@pytest_twisted.ensureDeferred
async def test_health_answers_before_registration(connect):
    client = await connect()
    answer = await client.call("health")
    assert answer["protocol"] == 1
    assert answer["database"] == "ok"
    assert isinstance(answer["version"], str) and answer["version"]
    assert isinstance(answer["uptime_ms"], int) and answer["uptime_ms"] >= 0


@pytest.mark.parametrize("operation", sorted(INSTANCE_OPERATIONS))
@pytest_twisted.ensureDeferred
async def test_anonymous_connections_are_refused_every_other_operation(connect, operation):
    client = await connect()
    code, fields = INSTANCE_OPERATIONS[operation]
    error = await remote_error(client.call(operation, {"instance_id": "i-1", **fields}))
    assert (error.code, error.kind, error.retryable) == (code, "PERMISSION_DENIED", False)


@pytest_twisted.ensureDeferred
async def test_registering_a_new_instance_starts_it(connect):
    client = await connect()
    instance_id = unique()
    answer = await client.call(
        "register_instance", {"instance_id": instance_id, "tenant_id": "tenant-a"}
    )
    assert answer == {"success": True, "error": "", "status": "running", "resumed": False}
    status = await client.call("get_instance_status", {"instance_id": instance_id})
    assert status["status"] == "running"
    assert status["started_at_ms"] > 0


@pytest_twisted.ensureDeferred
async def test_reregistering_resumes_from_a_checkpoint(connect):
    first = await connect()
    instance_id = await registered(first)
    await first.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "a", "state": b"1"}
    )
    await first.close()

    second = await connect()
    answer = await second.call(
        "register_instance",
        {"instance_id": instance_id, "tenant_id": "tenant-a", "checkpoint_id": "a"},
    )
    assert answer == {"success": True, "error": "", "status": "running", "resumed": True}


@pytest_twisted.ensureDeferred
async def test_unknown_checkpoint_is_refused_in_band(connect):
    client = await connect()
    instance_id = unique()
    answer = await client.call(
        "register_instance",
        {"instance_id": instance_id, "tenant_id": "tenant-a", "checkpoint_id": "nope"},
    )
    assert answer["success"] is False
    assert answer["error"].startswith("Checkpoint 'nope' not found")
    status = await (await connect()).call("health")
    assert status["database"] == "ok"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"instance_id": "", "tenant_id": "t"}, "instance_id"),
        ({"instance_id": "i", "tenant_id": ""}, "tenant_id"),
        ({"instance_id": "x" * 257, "tenant_id": "t"}, "at most 256 bytes"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_ids_are_refused_in_band(connect, fields, message):
    client = await connect()
    answer = await client.call("register_instance", fields)
    assert answer["success"] is False
    assert message in answer["error"]
    error = await remote_error(client.call("get_instance_status", {"instance_id": "i"}))
    assert error.kind == "PERMISSION_DENIED", "a refused registration leaves it anonymous"


@pytest_twisted.ensureDeferred
async def test_wrong_types_are_validation_errors(connect):
    client = await connect()
    error = await remote_error(
        client.call("register_instance", {"instance_id": 7, "tenant_id": "t"})
    )
    assert (error.code, error.kind) == ("REGISTER_INSTANCE_ERROR", "VALIDATION_ERROR")
    assert "'instance_id'" in error.message


@pytest_twisted.ensureDeferred
async def test_a_connection_serves_one_tenant(connect):
    client = await connect()
    await registered(client, tenant_id="tenant-a")
    answer = await client.call(
        "register_instance", {"instance_id": unique(), "tenant_id": "tenant-b"}
    )
    assert answer["success"] is False
    assert "tenant-a" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_other_tenants_instances_look_like_unknown_ones(connect):
    owner = await connect()
    instance_id = await registered(owner, tenant_id="tenant-a")
    await owner.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "a", "state": b"s"}
    )

    stranger = await connect()
    await registered(stranger, tenant_id="tenant-b")
    for operation, (code, fields) in INSTANCE_OPERATIONS.items():
        if operation in ("get_instance_status", "instance_event_batch"):
            continue
        error = await remote_error(stranger.call(operation, {"instance_id": instance_id, **fields}))
        assert (error.code, error.kind) == (code, "INSTANCE_NOT_FOUND"), operation
        assert error.message == f"Instance '{instance_id}' not found"
    status = await stranger.call("get_instance_status", {"instance_id": instance_id})
    assert status["status"] == "unknown"
    assert status["error"] == "Instance not found"
    answer = await stranger.call(
        "register_instance", {"instance_id": instance_id, "tenant_id": "tenant-b"}
    )
    assert answer["success"] is False
    assert answer["error"] == f"Instance '{instance_id}' not found"

    state = await owner.call("get_checkpoint", {"instance_id": instance_id, "checkpoint_id": "a"})
    assert state == {"found": True, "state": b"s"}, "the stranger changed nothing"


@pytest_twisted.ensureDeferred
async def test_a_supervisor_of_the_same_tenant_may_watch(connect):
    worker = await connect()
    instance_id = await registered(worker)
    supervisor = await connect()
    await registered(supervisor)
    status = await supervisor.call("get_instance_status", {"instance_id": instance_id})
    assert status["status"] == "running"


@pytest_twisted.ensureDeferred
async def test_unknown_ids_are_not_found_for_registered_connections(connect):
    client = await connect()
    await registered(client)
    error = await remote_error(
        client.call("checkpoint", {"instance_id": "missing", "checkpoint_id": "a", "state": b""})
    )
    assert (error.code, error.kind) == ("CHECKPOINT_ERROR", "INSTANCE_NOT_FOUND")
    assert error.message == "Instance 'missing' not found"


@pytest_twisted.ensureDeferred
async def test_terminal_instances_cannot_register_again(connect):
    client = await connect()
    instance_id = await registered(client)
    await client.call(
        "instance_event",
        {
            "instance_id": instance_id,
            "event_type": "completed",
            "payload": b"ok",
            "timestamp_ms": 1,
        },
    )
    answer = await client.call(
        "register_instance", {"instance_id": instance_id, "tenant_id": "tenant-a"}
    )
    assert answer["success"] is False
    assert answer["status"] == "completed"
    assert answer["error"] == f"Instance '{instance_id}' is already completed"


@pytest_twisted.ensureDeferred
async def test_tokens_are_required_when_configured(servers):
    core = await servers.start(auth_tokens={"tenant-a": "secret-a", "tenant-b": "secret-b"})
    good = await servers.connect(core)
    answer = await good.call(
        "register_instance", {"instance_id": unique(), "tenant_id": "tenant-a", "token": "secret-a"}
    )
    assert answer["success"] is True

    for fields in (
        {"tenant_id": "tenant-a"},
        {"tenant_id": "tenant-a", "token": "secret-b"},
        {"tenant_id": "tenant-c", "token": "secret-a"},
    ):
        client = await servers.connect(core)
        error = await remote_error(
            client.call("register_instance", {"instance_id": unique(), **fields})
        )
        assert (error.code, error.kind, error.retryable) == (
            "REGISTER_INSTANCE_ERROR",
            "UNAUTHENTICATED",
            False,
        )
        await client.connection.when_closed()
    assert (await good.call("health"))["database"] == "ok"


@pytest_twisted.ensureDeferred
async def test_the_instance_limit_refuses_one_more_and_frees_slots(servers):
    core = await servers.start(max_concurrent_instances=2)
    first = await servers.connect(core)
    second = await servers.connect(core)
    done = await registered(first)
    await registered(second)

    refused = unique()
    error = await remote_error(
        first.call("register_instance", {"instance_id": refused, "tenant_id": "tenant-a"})
    )
    assert (error.code, error.kind, error.retryable) == (
        "REGISTER_INSTANCE_ERROR",
        "RESOURCE_EXHAUSTED",
        True,
    )
    status = await first.call("get_instance_status", {"instance_id": refused})
    assert status["status"] == "unknown", "a refused registration writes nothing"

    await first.call(
        "instance_event",
        {"instance_id": done, "event_type": "completed", "payload": b"", "timestamp_ms": 1},
    )
    await registered(first, refused)

    await second.close()
    # The server sees the close once QUIC's draining period ends; the refusal
    # is retryable, so retry as a client would, within a deadline.
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + 5
    while True:
        try:
            await registered(first)
            break
        except RemoteError as error:
            assert error.kind == "RESOURCE_EXHAUSTED" and reactor.seconds() < deadline
            await task.deferLater(reactor, 0.05, lambda: None)
