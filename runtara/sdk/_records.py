"""The checkpoints the SDK writes for itself, as text an operator can read.

``wait_for_signal(name)`` keeps what it received under ``<name>#signal`` and
its deadline under ``<name>#deadline``. They are compact UTF-8 JSON, whatever
the workflow's serializer, so ``runtara checkpoints get`` prints them as
text:

- ``<name>#signal``: ``{"payload":"approved by alice"}`` (a payload that is
  not UTF-8: ``{"payload_base64":"..."}``), or, when the wait timed out,
  ``{"timed_out_at":"2026-12-02T03:44:04Z","timed_out_at_ms":1796168644123}``;
- ``<name>#deadline``: ``{"deadline":"2026-12-02T03:44:04Z","deadline_ms":1796168644123}``.

Records written by earlier versions of the SDK (msgpack: a map, or an
integer deadline) are still read, so instances started before an upgrade
replay as they were.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import msgpack

__all__ = [
    "Received",
    "deadline_record",
    "iso_utc",
    "read_deadline",
    "read_received",
    "signal_record",
    "timeout_record",
]

Received = bytes | int
"""What a ``<name>#signal`` record holds: the payload, or the deadline (ms) that passed."""


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC to the second (``2026-12-02T03:44:04Z``)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signal_record(payload: bytes) -> bytes:
    try:
        return _json({"payload": payload.decode("utf-8")})
    except UnicodeDecodeError:
        return _json({"payload_base64": base64.b64encode(payload).decode("ascii")})


def timeout_record(deadline_ms: int) -> bytes:
    return _json({"timed_out_at": iso_utc(deadline_ms), "timed_out_at_ms": deadline_ms})


def deadline_record(deadline_ms: int) -> bytes:
    return _json({"deadline": iso_utc(deadline_ms), "deadline_ms": deadline_ms})


def read_received(record: bytes) -> Received:
    """The payload a ``<name>#signal`` record holds, or the deadline (int) that passed."""
    fields = _read(record)
    if "payload" in fields:
        payload = fields["payload"]
        return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if "payload_base64" in fields:
        return base64.b64decode(fields["payload_base64"])
    return int(fields["timed_out_at_ms"] if "timed_out_at_ms" in fields else fields["timed_out"])


def read_deadline(record: bytes) -> int:
    fields = _read(record)
    return int(fields["deadline_ms"] if isinstance(fields, dict) else fields)


def _json(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _read(record: bytes) -> Any:
    if record.startswith(b"{"):
        return json.loads(record)
    return msgpack.unpackb(record, raw=False)
