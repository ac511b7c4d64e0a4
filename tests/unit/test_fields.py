"""Field access: required, optional, wrong types (PROTOCOL.md section 3)."""

import pytest

from runtara.errors import ValidationError
from runtara.fields import Fields
from runtara.model import CLIENT_EVENT_TYPES, EventType, SignalType


def test_missing_required_field_names_the_field():
    with pytest.raises(ValidationError) as raised:
        Fields({}).instance_id()
    assert raised.value.message == "Validation error for 'instance_id': is required"


def test_nil_is_the_same_as_absent():
    fields = Fields({"checkpoint_id": None, "payload": None, "timestamp_ms": None})
    assert fields.checkpoint_id(required=False) is None
    assert fields.bytes("payload", required=False) == b""
    assert fields.int("timestamp_ms", required=False) is None
    with pytest.raises(ValidationError):
        fields.checkpoint_id()


@pytest.mark.parametrize(
    "read, value, expected",
    [
        (lambda f: f.instance_id(), 5, "expected str, got int"),
        (lambda f: f.bytes("instance_id"), "text", "expected bin, got str"),
        (lambda f: f.int("instance_id"), True, "expected int, got bool"),
        (lambda f: f.int("instance_id"), 1.5, "expected int, got float"),
        (lambda f: f.bool("instance_id"), 1, "expected bool, got int"),
        (lambda f: f.list("instance_id"), {}, "expected array, got map"),
        (lambda f: f.instance_id(), "", "must not be empty"),
        (lambda f: f.instance_id(), "x" * 257, "at most 256 bytes"),
        (lambda f: f.checkpoint_id(), "é" * 257, "at most 512 bytes"),
        (lambda f: f.int("instance_id", minimum=1), 0, "must be >= 1"),
    ],
)
def test_wrong_values_are_validation_errors(read, value, expected):
    with pytest.raises(ValidationError, match=expected) as raised:
        read(Fields({"instance_id": value, "checkpoint_id": value}))
    assert raised.value.kind == "VALIDATION_ERROR"


def test_limits_are_inclusive():
    assert Fields({"instance_id": "x" * 256}).instance_id() == "x" * 256
    assert Fields({"checkpoint_id": "x" * 512}).checkpoint_id() == "x" * 512


def test_enums_accept_only_their_lowercase_values():
    assert Fields({"s": "pause"}).enum("s", SignalType) is SignalType.PAUSE
    with pytest.raises(ValidationError, match="cancel, pause, resume"):
        Fields({"s": "PAUSE"}).enum("s", SignalType)
    with pytest.raises(ValidationError):
        Fields({"e": "wake"}).enum("e", EventType, CLIENT_EVENT_TYPES)
