"""The JSON documents of runtara's domain values.

One shape for each value, shared by every front end that speaks JSON:
``runtara --json`` (``runtara.cli``) and the management HTTP API
(``runtara.web``). Bytes are UTF-8 text when they decode, else
``{"base64": "..."}``; times are ISO-8601 UTC with milliseconds, next to
the same time as epoch milliseconds (``created_at`` and ``created_at_ms``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from runtara.admin import Page
from runtara.model import (
    CheckpointInfo,
    EventRecord,
    InstanceDetails,
    InstanceRecord,
    PendingSignal,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ms: int | None, precise: bool = False) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC (``2023-11-14T22:13:20Z``), None stays None.

    ``precise`` adds the milliseconds (``2023-11-14T22:13:20.000Z``).
    """
    if ms is None:
        return None
    moment = _EPOCH + timedelta(milliseconds=ms)
    if precise:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def bytes_json(data: bytes | None) -> str | dict[str, str] | None:
    """Bytes in JSON: UTF-8 text when they decode, else ``{"base64": ...}``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def bytes_from_json(value: object) -> bytes:
    """The bytes ``bytes_json`` wrote: text as UTF-8, ``{"base64": ...}`` decoded.

    Raises ``ValueError`` for anything else.
    """
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid UTF-8 (lone surrogate)") from None
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the base64 value is not valid base64") from None
    raise ValueError('must be a string or {"base64": "..."}')


def time_json(name: str, ms: int | None) -> dict[str, Any]:
    """``{name: ISO-8601 with milliseconds, name_ms: ms}``."""
    return {name: iso(ms, precise=True), f"{name}_ms": ms}


def page_json(page: Page[Any]) -> dict[str, Any]:
    return {
        "offset": page.offset,
        "limit": page.limit,
        "total": page.total,
        "has_more": page.has_more,
    }


def instance_json(record: InstanceRecord) -> dict[str, Any]:
    return {
        "instance_id": record.instance_id,
        "tenant_id": record.tenant_id,
        "status": record.status.value,
        "checkpoint_id": record.checkpoint_id,
        **time_json("created_at", record.created_at_ms),
        **time_json("started_at", record.started_at_ms),
        **time_json("finished_at", record.finished_at_ms),
        **time_json("sleep_until", record.sleep_until_ms),
        "output": bytes_json(record.output),
        "error": record.error,
    }


def signal_json(signal: PendingSignal | None) -> dict[str, Any] | None:
    if signal is None:
        return None
    return {"signal_type": signal.signal_type.value, "payload": bytes_json(signal.payload)}


def details_json(details: InstanceDetails) -> dict[str, Any]:
    return {
        **instance_json(details.instance),
        "pending_signal": signal_json(details.pending_signal),
        "checkpoint_count": details.checkpoint_count,
        "event_count": details.event_count,
    }


def checkpoint_json(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "checkpoint_id": info.checkpoint_id,
        "size_bytes": info.size_bytes,
        **time_json("created_at", info.created_at_ms),
    }


def event_json(event: EventRecord) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "subtype": event.subtype,
        "checkpoint_id": event.checkpoint_id,
        "payload": bytes_json(event.payload),
        "client_ts_ms": event.client_ts_ms,
        **time_json("created_at", event.created_at_ms),
    }
