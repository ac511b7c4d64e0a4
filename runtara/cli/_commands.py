"""The ``runtara`` commands, each one a handler declared with ``@command``.

To add a command, write its handler here, in the place ``runtara --help``
should list it::

    @command("instances forget", "forget an instance", INSTANCE_ID, argument("--force", ...))
    async def _instances_forget(admin: Admin, arguments: Namespace, output: Output) -> int:
        ...
        output.result(document, lines)
        return EXIT_OK

The words name the command (a first word that is a group, like
``instances``, needs its help in ``GROUPS``); the arguments are
``add_argument``'s (``runtara.cli._arguments``). The handler runs on an
opened ``Admin`` whose schema is current (unless ``needs_schema=False``),
after the arguments were checked and the payload file read; it prints
through ``Output`` and returns the exit status. An exception is reported
as one line, exit status 1.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtara.admin import DEFAULT_PURGE_BATCH, STATUS_ORDER, Admin
from runtara.cli._arguments import (
    CHECKPOINT_ID,
    INSTANCE_ID,
    PAGE,
    PAYLOAD,
    AddArgument,
    argument,
    duration,
    one_of,
    tenant_id,
)
from runtara.cli._output import (
    Output,
    bytes_human,
    cell_time,
    fields,
    instance_fields,
    signal_human,
    table,
)
from runtara.cli._server import ServerCheck
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
from runtara.model import EventType, SignalType

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PREVIEW_CHARS = 40
"""How much of an event payload ``events list`` shows in its table."""

Handler = Callable[[Admin, Namespace, Output], Coroutine[Any, Any, int]]
"""A command's body: runs on an opened ``Admin``, prints, fires with the exit status."""


@dataclass(frozen=True)
class Command:
    """How to run one command: its handler, and what it needs from the database.

    ``creates``: may create the database (``migrate``). ``needs_schema``: the
    schema must be current before the handler runs. ``looks_for_server``:
    the handler gets ``arguments.server``, a ``ServerCheck`` of this
    environment's runtara-core.
    """

    handler: Handler
    creates: bool = False
    needs_schema: bool = True
    looks_for_server: bool = False


@dataclass(frozen=True)
class CommandLine:
    """Where a command sits on the command line: its ``words``
    (``("instances", "list")``), help and arguments, and the ``Command`` it runs."""

    words: tuple[str, ...]
    help: str
    arguments: tuple[AddArgument, ...]
    command: Command


GROUPS = {
    "instances": "list, show and create instances",
    "checkpoints": "list and read checkpoints",
    "events": "list an instance's events",
}
"""The commands that only group subcommands, with their help."""

COMMANDS: list[CommandLine] = []
"""Every command, in the order they are declared and ``runtara --help`` lists them."""


def command(
    words: str,
    help: str,
    *arguments: AddArgument,
    creates: bool = False,
    needs_schema: bool = True,
    looks_for_server: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare the decorated handler as the command ``words`` (see the module docstring)."""

    def declare(handler: Handler) -> Handler:
        line = CommandLine(
            tuple(words.split()),
            help,
            arguments,
            Command(handler, creates, needs_schema, looks_for_server),
        )
        COMMANDS.append(line)
        return handler

    return declare


@command(
    "health",
    "check the database; print its URL, schema version and counts by status, the server's"
    " state directory and certificate, and whether the server answers",
    needs_schema=False,
    looks_for_server=True,
)
async def _health(admin: Admin, arguments: Namespace, output: Output) -> int:
    health = await admin.health()
    if not health.reachable:
        output.failure(f"database {health.database} is unreachable")
        return EXIT_FAILURE
    if not health.schema_current:
        await admin.require_current_schema()
    total = sum(health.counts.values())
    server: ServerCheck = arguments.server
    document = {
        "database": health.database,
        "reachable": True,
        "schema_version": health.schema_version,
        **server.json(),
        "counts": {status.value: health.counts[status] for status in STATUS_ORDER},
        "total": total,
    }
    pairs = [
        ("database", health.database),
        ("reachable", "yes"),
        ("schema version", str(health.schema_version)),
        *server.lines(),
        ("instances", str(total)),
        *((f"  {status.value}", str(health.counts[status])) for status in STATUS_ORDER),
    ]
    output.result(document, fields(pairs))
    return EXIT_OK


@command(
    "migrate",
    "apply pending migrations and print the schema version",
    creates=True,
    needs_schema=False,
)
async def _migrate(admin: Admin, arguments: Namespace, output: Output) -> int:
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


@command(
    "instances list",
    "instances, newest first",
    argument("--tenant", metavar="T", type=tenant_id, help="only tenant T's instances"),
    argument(
        "--status",
        choices=[status.value for status in STATUS_ORDER],
        help="only instances in this status",
    ),
    *PAGE,
)
async def _instances_list(admin: Admin, arguments: Namespace, output: Output) -> int:
    page = await admin.list_instances(
        arguments.tenant, arguments.status, arguments.limit, arguments.offset
    )
    rows = [
        (
            record.instance_id,
            record.tenant_id,
            record.status.value,
            record.checkpoint_id or "-",
            cell_time(record.created_at_ms),
            cell_time(record.started_at_ms),
            cell_time(record.finished_at_ms),
        )
        for record in page.items
    ]
    headers = ("ID", "TENANT", "STATUS", "CHECKPOINT", "CREATED", "STARTED", "FINISHED")
    document = {"instances": [instance_json(record) for record in page.items], **page_json(page)}
    output.result(document, table(headers, rows))
    output.paging_hint(page)
    return EXIT_OK


@command("instances show", "every field of one instance", INSTANCE_ID)
async def _instances_show(admin: Admin, arguments: Namespace, output: Output) -> int:
    details = await admin.show_instance(arguments.instance_id)
    pairs = [
        *instance_fields(details.instance),
        ("pending signal", signal_human(details.pending_signal)),
        ("checkpoints", str(details.checkpoint_count)),
        ("events", str(details.event_count)),
    ]
    output.result(details_json(details), fields(pairs))
    return EXIT_OK


@command(
    "instances create",
    "create an instance in pending",
    INSTANCE_ID,
    argument(
        "--tenant", metavar="T", type=tenant_id, required=True, help="the tenant it belongs to"
    ),
)
async def _instances_create(admin: Admin, arguments: Namespace, output: Output) -> int:
    record = await admin.create_instance(arguments.instance_id, arguments.tenant)
    line = (
        f"created instance {record.instance_id} "
        f"(tenant {record.tenant_id}, status {record.status.value})"
    )
    output.result(instance_json(record), [line])
    return EXIT_OK


@command("checkpoints list", "an instance's checkpoints, newest first", INSTANCE_ID, *PAGE)
async def _checkpoints_list(admin: Admin, arguments: Namespace, output: Output) -> int:
    page = await admin.list_checkpoints(arguments.instance_id, arguments.limit, arguments.offset)
    rows = [
        (info.checkpoint_id, str(info.size_bytes), cell_time(info.created_at_ms))
        for info in page.items
    ]
    document = {
        "instance_id": arguments.instance_id,
        "checkpoints": [checkpoint_json(info) for info in page.items],
        **page_json(page),
    }
    output.result(document, table(("CHECKPOINT", "SIZE", "CREATED"), rows, frozenset({1})))
    output.paging_hint(page)
    return EXIT_OK


@command(
    "checkpoints get",
    "print (or write) a stored state",
    INSTANCE_ID,
    CHECKPOINT_ID,
    argument("--output", metavar="FILE", type=Path, help="write the state to FILE"),
)
async def _checkpoints_get(admin: Admin, arguments: Namespace, output: Output) -> int:
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


@command(
    "events list",
    "an instance's events, newest first",
    INSTANCE_ID,
    argument("--type", choices=[kind.value for kind in EventType], help="only events of this type"),
    argument("--subtype", metavar="S", help="only events of subtype S (custom events)"),
    *PAGE,
)
async def _events_list(admin: Admin, arguments: Namespace, output: Output) -> int:
    page = await admin.list_events(
        arguments.instance_id, arguments.type, arguments.subtype, arguments.limit, arguments.offset
    )
    rows = [
        (
            cell_time(event.created_at_ms),
            event.event_type.value,
            event.subtype or "-",
            event.checkpoint_id or "-",
            bytes_human(event.payload, PREVIEW_CHARS),
        )
        for event in page.items
    ]
    document = {
        "instance_id": arguments.instance_id,
        "events": [event_json(event) for event in page.items],
        **page_json(page),
    }
    headers = ("TIME", "TYPE", "SUBTYPE", "CHECKPOINT", "PAYLOAD")
    output.result(document, table(headers, rows))
    output.paging_hint(page)
    return EXIT_OK


@command(
    "signal",
    "send an instance-wide signal (protocol section 7)",
    INSTANCE_ID,
    argument("signal_type", choices=[kind.value for kind in SignalType], help="the signal to send"),
    PAYLOAD,
)
async def _signal(admin: Admin, arguments: Namespace, output: Output) -> int:
    await admin.send_signal(arguments.instance_id, arguments.signal_type, arguments.payload)
    document = {
        "instance_id": arguments.instance_id,
        "signal_type": arguments.signal_type,
        "payload": bytes_json(arguments.payload),
    }
    output.result(document, [f"sent {arguments.signal_type} to instance {arguments.instance_id}"])
    return EXIT_OK


@command(
    "custom-signal",
    "send a checkpoint-scoped custom signal (protocol section 7)",
    INSTANCE_ID,
    CHECKPOINT_ID,
    one_of(
        PAYLOAD,
        argument(
            "--payload-file", metavar="F", type=Path, help="read the payload from F (- for stdin)"
        ),
    ),
)
async def _custom_signal(admin: Admin, arguments: Namespace, output: Output) -> int:
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


@command(
    "purge",
    "delete terminal instances finished before now-AGE, with all their rows",
    argument(
        "--older-than", required=True, type=duration, metavar="AGE", help="30s, 15m, 2h or 7d"
    ),
    argument("--dry-run", action="store_true", help="only count them"),
)
async def _purge(admin: Admin, arguments: Namespace, output: Output) -> int:
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
