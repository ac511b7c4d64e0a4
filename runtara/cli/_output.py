"""How the ``runtara`` command prints: tables and aligned fields for people,
one JSON document with ``--json``, notes and failures on stderr.

Times are ISO 8601 UTC (to the second in tables, to the millisecond in JSON,
where epoch milliseconds go beside them); bytes are UTF-8 text when they
decode, else base64.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from runtara.admin import Page
from runtara.model import (
    CheckpointInfo,
    EventRecord,
    InstanceDetails,
    InstanceRecord,
    PendingSignal,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Output:
    """Where a command's results go: a table or one JSON document on stdout,
    notes and failures on stderr."""

    def __init__(self, stdout: TextIO, stderr: TextIO, as_json: bool) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.as_json = as_json

    def result(self, document: Any, lines: Iterable[str]) -> None:
        """Print ``document`` as JSON with ``--json``, else the human ``lines``."""
        if self.as_json:
            self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        else:
            self.stdout.write("".join(f"{line}\n" for line in lines))
        self.stdout.flush()

    def raw(self, data: bytes) -> None:
        """Write ``data`` to stdout unchanged."""
        self.stdout.flush()
        self.stdout.buffer.write(data)
        self.stdout.buffer.flush()

    def note(self, line: str) -> None:
        """A line for the operator on stderr (progress, paging hints)."""
        self.stderr.write(f"{line}\n")
        self.stderr.flush()

    def failure(self, reason: str) -> None:
        """The one line that reports a failure."""
        self.note(f"runtara: error: {one_line(reason)}")

    def paging_hint(self, page: Page[Any]) -> None:
        """Tell the operator how to see the rest when the page is not the end."""
        if self.as_json or not page.has_more:
            return
        first, last = page.offset + 1, page.offset + len(page.items)
        of_total = "" if page.total is None else f" of {page.total}"
        self.note(f"showing {first}-{last}{of_total}; use --offset {last} for more")


def one_line(text: str) -> str:
    return " ".join(text.split())


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a table cell stays on one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# -- values ------------------------------------------------------------------------


def iso(ms: int | None, precise: bool = False) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC (``2023-11-14T22:13:20Z``), None stays None."""
    if ms is None:
        return None
    moment = _EPOCH + timedelta(milliseconds=ms)
    if precise:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cell_time(ms: int | None) -> str:
    return iso(ms) or "-"


def bytes_json(data: bytes | None) -> str | dict[str, str] | None:
    """Bytes in JSON: UTF-8 text when they decode, else ``{"base64": ...}``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def bytes_human(data: bytes | None, limit: int | None = None) -> str:
    """Bytes for a table: text (cut at ``limit`` characters) or a binary summary."""
    if data is None:
        return "-"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if limit is None:
            return "base64:" + base64.b64encode(data).decode("ascii")
        return f"<{len(data)} bytes, binary>"
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return _printable(text)


def time_json(name: str, ms: int | None) -> dict[str, Any]:
    return {name: iso(ms, precise=True), f"{name}_ms": ms}


def page_json(page: Page[Any]) -> dict[str, Any]:
    return {
        "offset": page.offset,
        "limit": page.limit,
        "total": page.total,
        "has_more": page.has_more,
    }


# -- layouts -----------------------------------------------------------------------


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> list[str]:
    """Aligned columns, two spaces apart; columns in ``right`` are right-aligned."""
    cells = [[_printable(cell) for cell in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]

    def line(row: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in cells)]


def fields(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """``name  value`` lines with the values aligned."""
    width = max(len(name) for name, _ in pairs)
    return [f"{name.ljust(width)}  {_printable(value)}".rstrip() for name, value in pairs]


# -- records -----------------------------------------------------------------------


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


def instance_fields(record: InstanceRecord) -> list[tuple[str, str]]:
    return [
        ("instance", record.instance_id),
        ("tenant", record.tenant_id),
        ("status", record.status.value),
        ("checkpoint", record.checkpoint_id or "-"),
        ("created", cell_time(record.created_at_ms)),
        ("started", cell_time(record.started_at_ms)),
        ("finished", cell_time(record.finished_at_ms)),
        ("sleep until", cell_time(record.sleep_until_ms)),
        ("output", bytes_human(record.output)),
        ("error", record.error if record.error is not None else "-"),
    ]


def details_json(details: InstanceDetails) -> dict[str, Any]:
    return {
        **instance_json(details.instance),
        "pending_signal": _signal_json(details.pending_signal),
        "checkpoint_count": details.checkpoint_count,
        "event_count": details.event_count,
    }


def _signal_json(signal: PendingSignal | None) -> dict[str, Any] | None:
    if signal is None:
        return None
    return {"signal_type": signal.signal_type.value, "payload": bytes_json(signal.payload)}


def signal_human(signal: PendingSignal | None) -> str:
    if signal is None:
        return "-"
    if not signal.payload:
        return signal.signal_type.value
    return f"{signal.signal_type.value} (payload: {bytes_human(signal.payload)})"


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
