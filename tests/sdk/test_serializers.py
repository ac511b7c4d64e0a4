"""Serializers: round trips, and SerializationError for what they cannot handle."""

from __future__ import annotations

import pytest

from runtara.sdk import JsonSerializer, MsgpackSerializer, SerializationError, Serializer

VALUES = [None, True, 0, -(2**63), 2**64 - 1, 1.5, "", "naïve", [], [1, "two"], {"a": {"b": [1]}}]


@pytest.mark.parametrize("serializer", [MsgpackSerializer(), JsonSerializer()])
@pytest.mark.parametrize("value", VALUES)
def test_round_trip(serializer, value):
    encoded = serializer.encode(value)
    assert isinstance(encoded, bytes)
    assert serializer.decode(encoded) == value


@pytest.mark.parametrize("serializer", [MsgpackSerializer(), JsonSerializer()])
def test_they_are_serializers(serializer):
    assert isinstance(serializer, Serializer)


def test_msgpack_keeps_bytes_and_turns_tuples_into_lists():
    serializer = MsgpackSerializer()
    assert serializer.decode(serializer.encode({"raw": b"\x00\xff", "pair": (1, 2)})) == {
        "raw": b"\x00\xff",
        "pair": [1, 2],
    }


def test_msgpack_of_none_is_not_empty():
    assert MsgpackSerializer().encode(None) == b"\xc0"


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64])
def test_msgpack_refuses_what_it_cannot_encode(value):
    with pytest.raises(SerializationError, match="cannot encode"):
        MsgpackSerializer().encode(value)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01"])
def test_msgpack_refuses_invalid_bytes(data):
    with pytest.raises(SerializationError, match="cannot decode msgpack"):
        MsgpackSerializer().decode(data)


@pytest.mark.parametrize("value", [b"bytes", float("nan"), object()])
def test_json_refuses_what_it_cannot_encode(value):
    with pytest.raises(SerializationError, match="cannot encode"):
        JsonSerializer().encode(value)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff"])
def test_json_refuses_invalid_bytes(data):
    with pytest.raises(SerializationError, match="cannot decode JSON"):
        JsonSerializer().decode(data)


def test_json_is_compact_utf8_text():
    assert (
        JsonSerializer().encode({"name": "Zoë", "n": [1, 2]}) == '{"name":"Zoë","n":[1,2]}'.encode()
    )
