"""The ``runtara`` command: operators' tools on the server's database.

The contract is ``shared/CLI.md``; ``docs/operators-guide.md`` shows every
command with its output. The command works on the persistence the server
uses (no server needs to run) through ``runtara.admin``.

Choices the contract leaves open:

- The database is resolved exactly as the server resolves it
  (``--database``, else ``RUNTARA_DATABASE_URL``, else the embedded
  ``<state dir>/runtara.db`` of ``RUNTARA_STATE_DIR`` or the default state
  directory).
- Only ``migrate`` creates a SQLite database, and only in an existing
  directory, except for the default embedded database, whose state directory
  it creates (0700) as the server does. Every other command on a SQLite file
  that does not exist fails without creating it; on a database whose schema
  is not current it fails, telling to run ``runtara migrate``.
- ``--database`` and ``--json`` are accepted before or after the command.
- Listings take ``--limit`` (default 50) and ``--offset``; when more items
  follow, a hint line goes to stderr.
- Every failure is one line on stderr starting ``runtara``; exit status 2 for
  what the argument parser can tell, 1 for everything else, 130 when
  interrupted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure

from runtara import __version__
from runtara.admin import DEFAULT_PURGE_BATCH, STATUS_ORDER, Admin, AdminError, Page, open_admin
from runtara.config import config_from_env
from runtara.database_url import DatabaseURL
from runtara.documents import (
    bytes_json,
    checkpoint_json,
    details_json,
    event_json,
    instance_json,
    iso,
    page_json,
    time_json,
)
from runtara.errors import DatabaseError, RuntaraError, SchemaTooNew
from runtara.model import (
    EventType,
    InstanceRecord,
    PendingSignal,
    SignalType,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_LIMIT = 50
MAX_COUNT = 2**31 - 1
"""The largest ``--limit`` or ``--offset`` accepted."""

MAX_INSTANCE_ID_BYTES = 256
MAX_CHECKPOINT_ID_BYTES = 512
PREVIEW_CHARS = 40
"""How much of an event payload ``events list`` shows in its table."""

_DURATION = re.compile(r"([0-9]+)([smhd])")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DATABASE_VARIABLES = ("RUNTARA_DATABASE_URL", "RUNTARA_STATE_DIR", "XDG_STATE_HOME", "HOME")


# -- output ------------------------------------------------------------------------


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
        self.note(f"runtara: error: {_one_line(reason)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a table cell stays on one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _cell_time(ms: int | None) -> str:
    return iso(ms) or "-"


def _bytes_human(data: bytes | None, limit: int | None = None) -> str:
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


def _table(
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


def _fields(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """``name  value`` lines with the values aligned."""
    width = max(len(name) for name, _ in pairs)
    return [f"{name.ljust(width)}  {_printable(value)}".rstrip() for name, value in pairs]


def _paging_hint(page: Page[Any], output: Output) -> None:
    """Tell the operator how to see the rest when the page is not the end."""
    if output.as_json or not page.has_more:
        return
    first, last = page.offset + 1, page.offset + len(page.items)
    of_total = "" if page.total is None else f" of {page.total}"
    output.note(f"showing {first}-{last}{of_total}; use --offset {last} for more")


def _instance_fields(record: InstanceRecord) -> list[tuple[str, str]]:
    return [
        ("instance", record.instance_id),
        ("tenant", record.tenant_id),
        ("status", record.status.value),
        ("checkpoint", record.checkpoint_id or "-"),
        ("created", _cell_time(record.created_at_ms)),
        ("started", _cell_time(record.started_at_ms)),
        ("finished", _cell_time(record.finished_at_ms)),
        ("sleep until", _cell_time(record.sleep_until_ms)),
        ("output", _bytes_human(record.output)),
        ("error", record.error if record.error is not None else "-"),
    ]


def _signal_human(signal: PendingSignal | None) -> str:
    if signal is None:
        return "-"
    if not signal.payload:
        return signal.signal_type.value
    return f"{signal.signal_type.value} (payload: {_bytes_human(signal.payload)})"


# -- commands ----------------------------------------------------------------------


Handler = Callable[[Admin, argparse.Namespace, Output], Coroutine[Any, Any, int]]
"""A command's body: runs on an opened ``Admin``, prints, fires with the exit status."""


@dataclass(frozen=True)
class Command:
    """How to run one command: its handler, and what it needs from the database.

    ``creates``: may create the database (``migrate``). ``needs_schema``: the
    schema must be current before the handler runs.
    """

    handler: Handler
    creates: bool = False
    needs_schema: bool = True


async def _health(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    health = await admin.health()
    if not health.reachable:
        output.failure(f"database {health.database} is unreachable")
        return EXIT_FAILURE
    if not health.schema_current:
        await admin.require_current_schema()
    total = sum(health.counts.values())
    document = {
        "database": health.database,
        "reachable": True,
        "schema_version": health.schema_version,
        "counts": {status.value: health.counts[status] for status in STATUS_ORDER},
        "total": total,
    }
    pairs = [
        ("database", health.database),
        ("reachable", "yes"),
        ("schema version", str(health.schema_version)),
        ("instances", str(total)),
        *((f"  {status.value}", str(health.counts[status])) for status in STATUS_ORDER),
    ]
    output.result(document, _fields(pairs))
    return EXIT_OK


async def _migrate(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    migration = await admin.migrate()
    database = admin.url.masked()
    if migration.applied:
        plural = "" if migration.applied == 1 else "s"
        done = (
            f"applied {migration.applied} migration{plural}, "
            f"from version {migration.previous_version}"
        )
    else:
        done = "already up to date"
    document = {
        "database": database,
        "schema_version": migration.version,
        "previous_version": migration.previous_version,
        "applied": migration.applied,
    }
    output.result(document, [f"{database}: schema version {migration.version} ({done})"])
    return EXIT_OK


async def _instances_list(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    page = await admin.list_instances(
        arguments.tenant, arguments.status, arguments.limit, arguments.offset
    )
    rows = [
        (
            record.instance_id,
            record.tenant_id,
            record.status.value,
            record.checkpoint_id or "-",
            _cell_time(record.created_at_ms),
            _cell_time(record.started_at_ms),
            _cell_time(record.finished_at_ms),
        )
        for record in page.items
    ]
    headers = ("ID", "TENANT", "STATUS", "CHECKPOINT", "CREATED", "STARTED", "FINISHED")
    document = {"instances": [instance_json(record) for record in page.items], **page_json(page)}
    output.result(document, _table(headers, rows))
    _paging_hint(page, output)
    return EXIT_OK


async def _instances_show(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    details = await admin.show_instance(arguments.instance_id)
    pairs = [
        *_instance_fields(details.instance),
        ("pending signal", _signal_human(details.pending_signal)),
        ("checkpoints", str(details.checkpoint_count)),
        ("events", str(details.event_count)),
    ]
    output.result(details_json(details), _fields(pairs))
    return EXIT_OK


async def _instances_create(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    record = await admin.create_instance(arguments.instance_id, arguments.tenant)
    line = (
        f"created instance {record.instance_id} "
        f"(tenant {record.tenant_id}, status {record.status.value})"
    )
    output.result(instance_json(record), [line])
    return EXIT_OK


async def _checkpoints_list(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    page = await admin.list_checkpoints(arguments.instance_id, arguments.limit, arguments.offset)
    rows = [
        (info.checkpoint_id, str(info.size_bytes), _cell_time(info.created_at_ms))
        for info in page.items
    ]
    document = {
        "instance_id": arguments.instance_id,
        "checkpoints": [checkpoint_json(info) for info in page.items],
        **page_json(page),
    }
    output.result(document, _table(("CHECKPOINT", "SIZE", "CREATED"), rows, frozenset({1})))
    _paging_hint(page, output)
    return EXIT_OK


async def _checkpoints_get(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    state = await admin.get_checkpoint(arguments.instance_id, arguments.checkpoint_id)
    document: dict[str, Any] = {
        "instance_id": arguments.instance_id,
        "checkpoint_id": arguments.checkpoint_id,
        "size_bytes": len(state),
    }
    if arguments.output is None:
        if output.as_json:
            output.result({**document, "state": bytes_json(state)}, [])
        else:
            output.raw(state)
        return EXIT_OK
    arguments.output.write_bytes(state)
    line = f"wrote {len(state)} bytes to {arguments.output}"
    output.result({**document, "output": str(arguments.output)}, [line])
    return EXIT_OK


async def _events_list(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    page = await admin.list_events(
        arguments.instance_id, arguments.type, arguments.subtype, arguments.limit, arguments.offset
    )
    rows = [
        (
            _cell_time(event.created_at_ms),
            event.event_type.value,
            event.subtype or "-",
            event.checkpoint_id or "-",
            _bytes_human(event.payload, PREVIEW_CHARS),
        )
        for event in page.items
    ]
    document = {
        "instance_id": arguments.instance_id,
        "events": [event_json(event) for event in page.items],
        **page_json(page),
    }
    headers = ("TIME", "TYPE", "SUBTYPE", "CHECKPOINT", "PAYLOAD")
    output.result(document, _table(headers, rows))
    _paging_hint(page, output)
    return EXIT_OK


async def _signal(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    await admin.send_signal(arguments.instance_id, arguments.signal_type, arguments.payload)
    document = {
        "instance_id": arguments.instance_id,
        "signal_type": arguments.signal_type,
        "payload": bytes_json(arguments.payload),
    }
    output.result(document, [f"sent {arguments.signal_type} to instance {arguments.instance_id}"])
    return EXIT_OK


async def _custom_signal(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    await admin.send_custom_signal(
        arguments.instance_id, arguments.checkpoint_id, arguments.payload
    )
    document = {
        "instance_id": arguments.instance_id,
        "checkpoint_id": arguments.checkpoint_id,
        "payload": bytes_json(arguments.payload),
    }
    line = (
        f"sent a custom signal ({len(arguments.payload)} bytes) to instance "
        f"{arguments.instance_id} for checkpoint {arguments.checkpoint_id}"
    )
    output.result(document, [line])
    return EXIT_OK


async def _purge(admin: Admin, arguments: argparse.Namespace, output: Output) -> int:
    def progress(deleted: int, expected: int) -> None:
        if expected > DEFAULT_PURGE_BATCH:
            output.note(f"purged {deleted} of {expected} instances")

    result = await admin.purge(arguments.older_than, arguments.dry_run, progress)
    before = iso(result.finished_before_ms)
    plural = "" if result.count == 1 else "s"
    if result.dry_run:
        line = f"would delete {result.count} instance{plural} finished before {before} (dry run)"
    else:
        line = f"deleted {result.count} instance{plural} finished before {before}"
    document = {
        "dry_run": result.dry_run,
        "count": result.count,
        "deleted": 0 if result.dry_run else result.count,
        **time_json("finished_before", result.finished_before_ms),
    }
    output.result(document, [line])
    return EXIT_OK


# -- arguments ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(
            EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n"
        )


def _duration(text: str) -> int:
    """``30s``, ``15m``, ``2h``, ``7d`` as seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: write an integer and one unit (s, m, h or d),"
            " e.g. 30s, 15m, 2h or 7d"
        )
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if re.fullmatch(r"[0-9]+", text) and minimum <= int(text) <= MAX_COUNT:
            return int(text)
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer from {minimum} to {MAX_COUNT}"
        )

    return parse


def _identifier(what: str, max_bytes: int) -> Callable[[str], str]:
    """A non-empty UTF-8 string of at most ``max_bytes`` bytes (PROTOCOL.md section 6)."""

    def parse(text: str) -> str:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError(f"the {what} is not valid UTF-8") from None
        if not 0 < size <= max_bytes:
            raise argparse.ArgumentTypeError(
                f"the {what} must be 1 to {max_bytes} bytes long, got {size}"
            )
        return text

    return parse


_instance_id = _identifier("instance id", MAX_INSTANCE_ID_BYTES)
_checkpoint_id = _identifier("checkpoint id", MAX_CHECKPOINT_ID_BYTES)
_tenant_id = _identifier("tenant id", MAX_INSTANCE_ID_BYTES)


def _global_options(parser: argparse.ArgumentParser, leaf: bool) -> None:
    """``--database`` and ``--json``, also accepted after the command (``leaf``).

    A leaf parser leaves them unset unless given there, so that they do not
    hide the ones given before the command.
    """
    parser.add_argument(
        "--database",
        metavar="URL",
        default=argparse.SUPPRESS if leaf else None,
        help="postgresql://user[:pass]@host[:port]/db, sqlite:///abs/path.db or "
        "sqlite:rel/path.db (default: $RUNTARA_DATABASE_URL, else the server's "
        "embedded database)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if leaf else False,
        help="print one JSON document instead of a table",
    )


def _leaf(parent: Any, name: str, help_text: str, command: Command) -> argparse.ArgumentParser:
    """A command's parser, with the global options and its ``Command``."""
    parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
    _global_options(parser, leaf=True)
    parser.set_defaults(command=command)
    return parser


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        type=_count(1),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N (default {DEFAULT_LIMIT})",
    )
    parser.add_argument("--offset", type=_count(0), default=0, metavar="N", help="skip the first N")


def _group(parent: Any, name: str, help_text: str) -> Any:
    """A command with subcommands (``instances``, ``checkpoints``, ``events``)."""
    parser = parent.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(metavar="COMMAND", required=True, dest=f"{name}_command")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``runtara``'s command line."""
    parser = _Parser(
        prog="runtara",
        description="Manage a runtara database: instances, checkpoints, events, signals.",
    )
    parser.add_argument("--version", action="version", version=f"runtara {__version__}")
    _global_options(parser, leaf=False)
    commands = parser.add_subparsers(metavar="COMMAND", required=True, dest="command_name")
    _leaf(
        commands,
        "health",
        "check the database; print its URL, schema version and counts by status",
        Command(_health, needs_schema=False),
    )
    _leaf(
        commands,
        "migrate",
        "apply pending migrations and print the schema version",
        Command(_migrate, creates=True, needs_schema=False),
    )
    _instance_commands(_group(commands, "instances", "list, show and create instances"))
    _checkpoint_commands(_group(commands, "checkpoints", "list and read checkpoints"))
    events = _group(commands, "events", "list an instance's events")
    listing = _leaf(events, "list", "an instance's events, newest first", Command(_events_list))
    listing.add_argument("instance_id", metavar="ID", type=_instance_id)
    listing.add_argument("--type", choices=[kind.value for kind in EventType])
    listing.add_argument("--subtype", metavar="S")
    _page_options(listing)
    _signal_commands(commands)
    purge = _leaf(
        commands,
        "purge",
        "delete terminal instances finished before now-AGE, with all their rows",
        Command(_purge),
    )
    purge.add_argument(
        "--older-than", required=True, type=_duration, metavar="AGE", help="30s, 15m, 2h or 7d"
    )
    purge.add_argument("--dry-run", action="store_true", help="only count them")
    return parser


def _instance_commands(instances: Any) -> None:
    listing = _leaf(instances, "list", "instances, newest first", Command(_instances_list))
    listing.add_argument("--tenant", metavar="T", type=_tenant_id)
    listing.add_argument("--status", choices=[status.value for status in STATUS_ORDER])
    _page_options(listing)
    show = _leaf(instances, "show", "every field of one instance", Command(_instances_show))
    show.add_argument("instance_id", metavar="ID", type=_instance_id)
    create = _leaf(instances, "create", "create an instance in pending", Command(_instances_create))
    create.add_argument("instance_id", metavar="ID", type=_instance_id)
    create.add_argument("--tenant", metavar="T", type=_tenant_id, required=True)


def _checkpoint_commands(checkpoints: Any) -> None:
    listing = _leaf(
        checkpoints, "list", "an instance's checkpoints, newest first", Command(_checkpoints_list)
    )
    listing.add_argument("instance_id", metavar="ID", type=_instance_id)
    _page_options(listing)
    get = _leaf(checkpoints, "get", "print (or write) a stored state", Command(_checkpoints_get))
    get.add_argument("instance_id", metavar="ID", type=_instance_id)
    get.add_argument("checkpoint_id", metavar="CP", type=_checkpoint_id)
    get.add_argument("--output", metavar="FILE", type=Path, help="write the state to FILE")


def _signal_commands(commands: Any) -> None:
    signal = _leaf(
        commands, "signal", "send an instance-wide signal (protocol section 7)", Command(_signal)
    )
    signal.add_argument("instance_id", metavar="ID", type=_instance_id)
    signal.add_argument("signal_type", choices=[kind.value for kind in SignalType])
    signal.add_argument("--payload", metavar="TEXT", type=os.fsencode, default=b"")
    custom = _leaf(
        commands,
        "custom-signal",
        "send a checkpoint-scoped custom signal (protocol section 7)",
        Command(_custom_signal),
    )
    custom.add_argument("instance_id", metavar="ID", type=_instance_id)
    custom.add_argument("checkpoint_id", metavar="CP", type=_checkpoint_id)
    payload = custom.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="TEXT", type=os.fsencode, default=b"")
    payload.add_argument(
        "--payload-file", metavar="F", type=Path, help="read the payload from F (- for stdin)"
    )


# -- running -----------------------------------------------------------------------


class _Refused(Exception):
    """A check made before the database is touched failed; ``str()`` says why."""


def _resolve_database(
    option: str | None, environ: Mapping[str, str]
) -> tuple[DatabaseURL, Path | None]:
    """The database URL, resolved as the server resolves it, and the state
    directory when it is the embedded default (else None)."""
    relevant = {name: environ[name] for name in _DATABASE_VARIABLES if name in environ}
    config = config_from_env(relevant, database_url=option)
    return config.database_url, config.state_dir if config.embedded_database else None


def _read_inputs(arguments: argparse.Namespace, stdin: Any) -> None:
    """Read the payload file and check the output directory, before the database."""
    payload_file: Path | None = getattr(arguments, "payload_file", None)
    if payload_file is not None:
        try:
            if str(payload_file) == "-":
                arguments.payload = stdin.buffer.read()
            else:
                arguments.payload = payload_file.read_bytes()
        except OSError as error:
            raise _Refused(f"cannot read payload file '{payload_file}': {error.strerror}") from None
    target: Path | None = getattr(arguments, "output", None)
    if target is not None:
        if target.is_dir():
            raise _Refused(f"cannot write '{target}': it is a directory")
        if not target.absolute().parent.is_dir():
            raise _Refused(f"cannot write '{target}': its directory does not exist")


def _failure_reason(error: BaseException, url: DatabaseURL | None, opened: bool) -> str:
    """One line saying why a command failed."""
    if isinstance(error, DatabaseError) and not opened and url is not None:
        return f"cannot open the database {url.masked()}: {error.details}"
    if isinstance(error, RuntaraError):
        return error.message
    if isinstance(error, OSError):
        where = f"'{error.filename}': " if error.filename else ""
        return f"{where}{error.strerror or error}"
    if isinstance(error, (AdminError, SchemaTooNew, ValueError, _Refused)):
        return str(error)
    return f"internal error: {type(error).__name__}: {error}"


async def execute(
    arguments: argparse.Namespace,
    reactor: Any,
    output: Output,
    environ: Mapping[str, str],
    stdin: Any = None,
) -> int:
    """Run parsed ``arguments`` on the reactor; fire with the exit status. Never fails."""
    url: DatabaseURL | None = None
    admin: Admin | None = None
    try:
        url, state_dir = _resolve_database(arguments.database, environ)
        _read_inputs(arguments, stdin or sys.stdin)
        command: Command = arguments.command
        if command.creates and state_dir is not None:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        admin = await open_admin(url, reactor, create=command.creates)
        if command.needs_schema:
            await admin.require_current_schema()
        return await command.handler(admin, arguments, output)
    except Exception as error:
        output.failure(_failure_reason(error, url, admin is not None))
        return EXIT_FAILURE
    finally:
        if admin is not None:
            await _close_quietly(admin)


async def _close_quietly(admin: Admin) -> None:
    """Close the database; a failure to close changes nothing already done."""
    try:
        await admin.close()
    except Exception:
        return


def _exit_status(exit: SystemExit) -> int:
    code = exit.code
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_FAILURE


async def run(argv: Sequence[str], reactor: Any, environ: Mapping[str, str] | None = None) -> int:
    """Run ``runtara argv`` inside an already running reactor; fire with the exit status.

    Writes to ``sys.stdout`` and ``sys.stderr``; ``environ`` defaults to
    ``os.environ``.
    """
    try:
        arguments = build_parser().parse_args(argv)
    except SystemExit as exit:
        return _exit_status(exit)
    output = Output(sys.stdout, sys.stderr, arguments.json)
    return await execute(arguments, reactor, output, os.environ if environ is None else environ)


def _discard_twisted_logs() -> None:
    """Keep Twisted's log (tracebacks included) off the operator's terminal."""
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)


def _run_reactor(work: Callable[[Any], Coroutine[Any, Any, int]], output: Output) -> int:
    """Run the reactor until ``work`` fires with an exit status, and return it."""
    from twisted.internet import reactor

    statuses: list[int] = []

    def finished(status: int | Failure) -> None:
        if isinstance(status, Failure):
            output.failure(f"internal error: {status.getErrorMessage()}")
            status = EXIT_FAILURE
        statuses.append(status)
        try:
            reactor.stop()
        except ReactorNotRunning:
            return

    def begin() -> None:
        Deferred.fromCoroutine(work(reactor)).addBoth(finished)

    reactor.callWhenRunning(begin)
    reactor.run()
    if not statuses:
        output.failure("interrupted")
        return EXIT_INTERRUPTED
    return statuses[0]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``runtara`` console script: run one command, return its exit status."""
    try:
        arguments = build_parser().parse_args(argv)
    except SystemExit as exit:
        return _exit_status(exit)
    output = Output(sys.stdout, sys.stderr, arguments.json)
    _discard_twisted_logs()
    return _run_reactor(lambda reactor: execute(arguments, reactor, output, os.environ), output)


if __name__ == "__main__":
    sys.exit(main())
