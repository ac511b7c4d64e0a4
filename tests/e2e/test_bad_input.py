"""PROTOCOL.md sections 2-4: bad frames get the right error and change nothing,
and the server keeps serving the same and other connections."""

import struct

import msgpack
import pytest
import pytest_twisted

from runtara.client import parse_response
from tests.e2e.support import registered

pytestmark = pytest.mark.e2e


def frame(body, frame_type=1):
    return struct.pack(">IH", len(body), frame_type) + body


def packed(value):
    return msgpack.packb(value, use_bin_type=True)


def nested(depth):
    value = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


BAD_REQUESTS = {
    "zero-length body": (frame(b""), "MALFORMED_REQUEST"),
    "not msgpack": (frame(b"\xc1\xc1"), "MALFORMED_REQUEST"),
    "not a map": (frame(packed([1, 2])), "MALFORMED_REQUEST"),
    "trailing bytes": (frame(packed({"health": {}}) + b"\x00"), "MALFORMED_REQUEST"),
    "invalid utf-8": (frame(b"\x81\xa6health\xa2\xff\xfe"), "MALFORMED_REQUEST"),
    "non-string key": (frame(packed({1: {}})), "MALFORMED_REQUEST"),
    "too deep": (frame(packed({"health": nested(32)})), "MALFORMED_REQUEST"),
    "two operations": (frame(packed({"health": {}, "poll_signals": {}})), "MALFORMED_REQUEST"),
    "fields not a map": (frame(packed({"health": 5})), "MALFORMED_REQUEST"),
    "response type": (frame(packed({"health": {}}), frame_type=2), "MALFORMED_REQUEST"),
    "unknown type": (frame(packed({"health": {}}), frame_type=7), "MALFORMED_REQUEST"),
    "empty map": (frame(packed({})), "EMPTY_REQUEST"),
    "unknown operation": (frame(packed({"launch_rockets": {}})), "UNKNOWN_OPERATION"),
    "incomplete header": (b"\x00\x00\x00", "MALFORMED_REQUEST"),
    "incomplete body": (struct.pack(">IH", 100, 1) + b"short", "MALFORMED_REQUEST"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_their_error_and_the_server_goes_on(connect, name):
    data, code = BAD_REQUESTS[name]
    client = await connect()
    bystander = await connect()
    instance_id = await registered(bystander)
    response = parse_response(await client.request(data))
    error = response["error"]
    assert error["code"] == code
    assert error["retryable"] is False
    assert error["message"]
    assert (await client.call("health"))["database"] == "ok"
    answer = await bystander.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "a", "state": b"x"}
    )
    assert answer["found"] is False


@pytest_twisted.ensureDeferred
async def test_depth_32_is_still_accepted(connect):
    client = await connect()
    response = parse_response(await client.request(frame(packed({"health": nested(31)}))))
    assert "health" in response


@pytest_twisted.ensureDeferred
async def test_an_oversized_header_is_refused_without_reading_the_body(servers):
    core = await servers.start(max_message_bytes=1000)
    client = await servers.connect(core)
    header_only = struct.pack(">IH", 1001, 1)
    response = parse_response(await client.request(header_only, end_stream=False))
    assert response["error"]["code"] == "MESSAGE_TOO_LARGE"
    fits = packed({"get_checkpoint": {"instance_id": "x" * 900, "checkpoint_id": "a"}})
    assert len(fits) <= 1000
    response = parse_response(await client.request(frame(fits)))
    assert response["error"]["kind"] == "PERMISSION_DENIED", "a body within the limit is read"


@pytest_twisted.ensureDeferred
async def test_the_default_limit_refuses_more_than_64_mib(connect):
    client = await connect()
    header_only = struct.pack(">IH", 64 * 1024 * 1024 + 1, 1)
    response = parse_response(await client.request(header_only, end_stream=False))
    assert response["error"]["code"] == "MESSAGE_TOO_LARGE"
    assert (await client.call("health"))["database"] == "ok"


@pytest_twisted.ensureDeferred
async def test_unknown_fields_are_ignored(connect):
    client = await connect()
    instance_id = await registered(client, future_field={"nested": [1, 2]})
    answer = await client.call(
        "checkpoint",
        {"instance_id": instance_id, "checkpoint_id": "a", "state": b"", "priority": 9},
    )
    assert answer["found"] is False
