"""Property-based fuzzing of requests against a real server over QUIC.

- Any byte string sent as a request gets exactly one well-formed response
  frame, or a stream reset; never an ``INTERNAL`` error, never a hang, and
  the connection survives.
- Every operation, given its own field names with values of any msgpack
  type (and plausible ones, so that real code paths run), answers with its
  result map or an error of its own code; never ``INTERNAL``.

The raw-bytes property runs ``RUNTARA_FUZZ_EXAMPLES`` examples (default 200),
each operation's property half as many; set it higher for a longer hunt. The
server and clients are module-scoped, as hypothesis needs with pytest-twisted
(stack-probe.md section 5).
"""

from __future__ import annotations

import os
import string
import struct
from typing import Any

import msgpack
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred

from runtara.client import RemoteError, RuntaraClient, request_frame
from runtara.config import config_from_env
from runtara.dispatch import EMPTY_REQUEST, MALFORMED_REQUEST, MESSAGE_TOO_LARGE, UNKNOWN_OPERATION
from runtara.errors import ErrorKind
from runtara.frames import FrameType, decode_frame, encode_frame
from runtara.operations import OPERATIONS
from runtara.quic.client import StreamResetError
from runtara.runtime import start_core

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("RUNTARA_FUZZ_EXAMPLES", "200"))
FIELD_EXAMPLES = max(1, EXAMPLES // 2)
"""Examples per operation: eleven properties share the time of the raw-bytes one."""
CALL_TIMEOUT = 10.0
"""Seconds one fuzzed call may take; sleeps are fuzzed with tiny durations only."""

TENANT = "fuzz-tenant"
REGISTERED = "fuzz-instance"
ENVELOPE_CODES = {EMPTY_REQUEST, UNKNOWN_OPERATION, MALFORMED_REQUEST, MESSAGE_TOO_LARGE}
KINDS = {kind.value for kind in ErrorKind}

FIELDS: dict[str, tuple[str, ...]] = {
    "register_instance": ("instance_id", "tenant_id", "checkpoint_id", "token"),
    "checkpoint": ("instance_id", "checkpoint_id", "state"),
    "get_checkpoint": ("instance_id", "checkpoint_id"),
    "sleep": ("instance_id", "duration_ms", "checkpoint_id", "state"),
    "instance_event": (
        "instance_id",
        "event_type",
        "checkpoint_id",
        "payload",
        "timestamp_ms",
        "subtype",
    ),
    "instance_event_batch": ("events",),
    "get_instance_status": ("instance_id",),
    "poll_signals": ("instance_id", "checkpoint_id"),
    "signal_ack": ("instance_id", "signal_type", "acknowledged"),
    "retry_attempt": (
        "instance_id",
        "checkpoint_id",
        "attempt_number",
        "timestamp_ms",
        "error_message",
    ),
    "health": (),
}
"""Every operation's field names, as PROTOCOL.md section 6 lists them."""


def test_every_operation_is_fuzzed():
    assert set(FIELDS) == set(OPERATIONS)


# -- strategies ---------------------------------------------------------------------------

msgpack_integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    msgpack_integers,
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=64),
)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)
"""Any value msgpack can carry with ``str`` keys."""

odd_values = st.one_of(
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.dictionaries(msgpack_integers, scalars, min_size=1, max_size=2),
)
"""Values the protocol forbids: extension types, maps with non-str keys."""

identifiers = st.one_of(
    st.sampled_from([REGISTERED, "", "unknown-instance", "x" * 300, "é" * 200]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20),
)
checkpoint_ids = st.one_of(st.sampled_from(["cp", "nap", "", "y" * 600]), st.text(max_size=20))
plausible: dict[str, st.SearchStrategy[Any]] = {
    "instance_id": identifiers,
    "tenant_id": st.sampled_from([TENANT, "other-tenant", ""]),
    "checkpoint_id": checkpoint_ids,
    "token": st.text(max_size=10),
    "state": st.binary(max_size=256),
    "payload": st.binary(max_size=256),
    "duration_ms": st.integers(min_value=-5, max_value=20),
    "event_type": st.sampled_from(
        ["heartbeat", "completed", "failed", "suspended", "custom", "started", "wake", "bogus"]
    ),
    "timestamp_ms": msgpack_integers,
    "subtype": st.text(max_size=10),
    "signal_type": st.sampled_from(["cancel", "pause", "resume", "custom", ""]),
    "acknowledged": st.booleans(),
    "attempt_number": st.integers(min_value=-2, max_value=5),
    "error_message": st.text(max_size=40),
}
"""Values of the right type and shape, so that the operations' own paths run."""


def any_value(name: str) -> st.SearchStrategy[Any]:
    """Any value for the field ``name``, of the right type now and then."""
    if name == "duration_ms":
        # Any int would let a valid sleep hold the call for ages; other types are fine.
        return st.one_of(plausible[name], msgpack_values.filter(lambda v: type(v) is not int))
    return st.one_of(plausible[name], msgpack_values, odd_values)


def field_maps(operation: str) -> st.SearchStrategy[dict[str, Any]]:
    """The operation's fields: all plausible; all plausible but one (of any value, or
    absent); or each present or not with any value; now and then an unknown field."""
    names = FIELDS[operation]
    whole = st.fixed_dictionaries({name: plausible[name] for name in names})
    any_fields = st.fixed_dictionaries({}, optional={name: any_value(name) for name in names})
    choices = [whole, any_fields]
    if names:
        one_changed = st.sampled_from(names).flatmap(
            lambda name: st.tuples(st.just(name), st.one_of(st.none(), any_value(name)))
        )
        choices.append(
            st.builds(lambda fields, change: {**fields, **dict([change])}, whole, one_changed)
        )
    extra = st.fixed_dictionaries({}, optional={"unknown_field": msgpack_values})
    return st.builds(lambda fields, more: {**fields, **more}, st.one_of(choices), extra)


plausible["events"] = st.lists(field_maps("instance_event"), max_size=4)


def forbidden(value: Any) -> bool:
    """Whether ``value`` holds something the protocol's msgpack forbids (``odd_values``)."""
    if isinstance(value, msgpack.ExtType):
        return True
    if isinstance(value, dict):
        return any(not isinstance(key, str) or forbidden(item) for key, item in value.items())
    if isinstance(value, list):
        return any(forbidden(item) for item in value)
    return False


def frame(frame_type: int, body: bytes) -> bytes:
    return struct.pack(">IH", len(body), frame_type) + body


request_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(frame, st.sampled_from([1, 1, 1, 0, 2, 3, 65535]), st.binary(max_size=200)),
    st.builds(
        lambda value: encode_frame(FrameType.REQUEST, msgpack.packb(value, use_bin_type=True)),
        st.one_of(msgpack_values, odd_values),
    ),
    st.builds(
        lambda name, fields: request_frame(name, fields),
        st.sampled_from(sorted(OPERATIONS)),
        msgpack_values,
    ),
    st.builds(
        lambda length, kind, tail: struct.pack(">IH", length, kind) + tail,
        st.integers(0, 2**32 - 1),
        st.sampled_from([1, 2]),
        st.binary(max_size=40),
    ),
)
"""Raw bytes, frames of any type, frames of any msgpack body, near-valid requests,
and headers announcing any length (up to 4 GiB) followed by a few bytes."""


# -- the server ---------------------------------------------------------------------------


class Fuzzed:
    """A running server, a registered client and an anonymous one."""

    def __init__(self, core, registered: RuntaraClient, anonymous: RuntaraClient) -> None:
        self.core = core
        self.registered = registered
        self.anonymous = anonymous


@pytest_twisted.async_yield_fixture(scope="module")
async def fuzzed(tmp_path_factory):
    from twisted.internet import reactor

    state_dir = tmp_path_factory.mktemp("fuzz-state")
    config = config_from_env({}, state_dir=state_dir, quic_port=0)
    core = await start_core(config, reactor)
    options = {"cafile": str(core.certificate_path)}
    registered = await RuntaraClient.connect(reactor, "127.0.0.1", core.port, **options)
    anonymous = await RuntaraClient.connect(reactor, "127.0.0.1", core.port, **options)
    answer = await registered.call(
        "register_instance", {"instance_id": REGISTERED, "tenant_id": TENANT}
    )
    assert answer["success"], answer
    yield Fuzzed(core, registered, anonymous)
    for client in (registered, anonymous):
        assert not client.connection.terminated, "the server kept every connection"
        assert "version" in await client.call("health")
        await client.close()
    await core.stop()


async def with_timeout(call):
    """Await ``call`` (a Deferred or a coroutine); a hang fails the example."""
    from twisted.internet import reactor

    deferred = ensureDeferred(call)
    deferred.addTimeout(CALL_TIMEOUT, reactor)
    return await deferred


def check_error(error: dict[str, Any], codes: set[str]) -> None:
    assert set(error) == {"code", "kind", "message", "retryable"}, error
    assert error["code"] in codes, error
    assert error["kind"] in KINDS and error["kind"] != "INTERNAL", error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["retryable"], bool), error


def check_response(data: bytes, codes: set[str]) -> None:
    """``data`` is exactly one response frame: a map with one key, a result or an error."""
    frame_type, body = decode_frame(data)
    assert frame_type == FrameType.RESPONSE
    response = msgpack.unpackb(body, raw=False, strict_map_key=True)
    assert isinstance(response, dict) and len(response) == 1, response
    [(key, value)] = response.items()
    if key == "error":
        check_error(value, codes)
    else:
        assert key in OPERATIONS and isinstance(value, dict), response


# -- properties ---------------------------------------------------------------------------

ALL_CODES = ENVELOPE_CODES | {operation.error_code for operation in OPERATIONS.values()}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=request_bytes, registered=st.booleans())
@pytest_twisted.ensureDeferred
async def test_any_bytes_get_one_response_frame_or_a_reset(fuzzed, data, registered):
    client = fuzzed.registered if registered else fuzzed.anonymous
    try:
        answer = await with_timeout(client.request(data))
    except StreamResetError:
        return
    check_response(answer, ALL_CODES)


def fields_property(operation: str):
    """A property for one operation: its fields of any type, on either connection.

    One test function per operation: pytest-twisted wraps a hypothesis test's
    inner function once per function object, which ``parametrize`` would share.
    """

    @settings(
        max_examples=FIELD_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(data=st.data())
    @pytest_twisted.ensureDeferred
    async def fields_of_any_type(fuzzed, data):
        fields = data.draw(field_maps(operation), label="fields")
        registered = data.draw(st.booleans(), label="registered")
        client = fuzzed.registered if registered else fuzzed.anonymous
        codes = {MALFORMED_REQUEST} if forbidden(fields) else {OPERATIONS[operation].error_code}
        try:
            result = await with_timeout(client.call(operation, fields))
        except RemoteError as error:
            check_error(
                {
                    "code": error.code,
                    "kind": error.kind,
                    "message": error.message,
                    "retryable": error.retryable,
                },
                codes,
            )
            return
        assert isinstance(result, dict)

    return fields_of_any_type


test_register_instance_fields = fields_property("register_instance")
test_checkpoint_fields = fields_property("checkpoint")
test_get_checkpoint_fields = fields_property("get_checkpoint")
test_sleep_fields = fields_property("sleep")
test_instance_event_fields = fields_property("instance_event")
test_instance_event_batch_fields = fields_property("instance_event_batch")
test_get_instance_status_fields = fields_property("get_instance_status")
test_poll_signals_fields = fields_property("poll_signals")
test_signal_ack_fields = fields_property("signal_ack")
test_retry_attempt_fields = fields_property("retry_attempt")
test_health_fields = fields_property("health")


def test_every_operation_has_a_property():
    properties = {name for name in globals() if name.endswith("_fields")}
    assert properties == {f"test_{operation}_fields" for operation in OPERATIONS}
