"""How the ``runtara`` command prints: tables and aligned fields for people,
one JSON document with ``--json``, notes and failures on stderr.

Times are ISO 8601 UTC (to the second in tables); bytes are UTF-8 text when
they decode, else base64. The JSON documents are ``runtara.documents``',
shared with the management HTTP API.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from runtara.admin import Page
from runtara.documents import iso
from runtara.model import InstanceRecord, PendingSignal


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


def cell_time(ms: int | None) -> str:
    return iso(ms) or "-"


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


def signal_human(signal: PendingSignal | None) -> str:
    if signal is None:
        return "-"
    if not signal.payload:
        return signal.signal_type.value
    return f"{signal.signal_type.value} (payload: {bytes_human(signal.payload)})"
