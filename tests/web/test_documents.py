"""The JSON shape of bytes, shared by ``runtara --json`` and the HTTP API."""

from __future__ import annotations

import pytest

from runtara.documents import bytes_from_json, bytes_json, iso


@pytest.mark.parametrize("data", [b"", b"plain text", "h\u00e9llo".encode(), b"\xff\x00\xfe"])
def test_bytes_survive_a_round_trip(data):
    assert bytes_from_json(bytes_json(data)) == data


def test_text_stays_text_and_binary_becomes_base64():
    assert bytes_json(b"<script>") == "<script>"
    assert bytes_json(b"\xff\xfe") == {"base64": "//4="}


@pytest.mark.parametrize(
    "value", [3, None, ["a"], {"base64": "not base64!"}, {"base64": "AA==", "x": 1}, "\ud800"]
)
def test_anything_else_is_refused(value):
    with pytest.raises(ValueError):
        bytes_from_json(value)


def test_times_are_utc_iso_8601():
    assert iso(1_700_000_000_123) == "2023-11-14T22:13:20Z"
    assert iso(1_700_000_000_123, precise=True) == "2023-11-14T22:13:20.123Z"
    assert iso(None) is None
