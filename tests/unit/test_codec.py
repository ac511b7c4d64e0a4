"""Strict msgpack decoding of bodies (PROTOCOL.md section 2)."""

import msgpack
import pytest

from runtara import codec


def nested(depth):
    value = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_round_trip_keeps_bytes_and_text_apart():
    value = {"checkpoint": {"instance_id": "i-1", "state": b"\x00\xff"}}
    encoded = codec.encode(value)
    assert codec.decode(encoded) == value
    assert isinstance(codec.decode(encoded)["checkpoint"]["state"], bytes)


@pytest.mark.parametrize(
    "body, reason",
    [
        (msgpack.packb({"a": 1}) + b"\x00", "trailing"),
        (b"\xa2\xff\xfe", "UTF-8"),
        (msgpack.packb({1: "x"}), "keys"),
        (msgpack.packb({b"key": "x"}, use_bin_type=True), "keys"),
        (msgpack.packb({"a": msgpack.ExtType(5, b"x")}), "extension"),
        (msgpack.packb({"a": msgpack.Timestamp(1)}), "extension"),
        (b"\xc1", "invalid"),
        (b"\x81", "invalid"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body, reason):
    with pytest.raises(codec.MalformedBody, match=reason):
        codec.decode(body)


def test_depth_limit_counts_the_body_as_level_one():
    assert codec.decode(codec.encode(nested(32))) == nested(32)
    with pytest.raises(codec.MalformedBody, match="deeper than 32"):
        codec.decode(codec.encode(nested(33)))


def test_depth_limit_applies_to_arrays_too():
    value = {"a": [[[]]]}
    for _ in range(28):
        value = {"a": value}
    assert codec.decode(codec.encode(value))
    with pytest.raises(codec.MalformedBody):
        codec.decode(codec.encode({"a": value}))
