"""Running one ``runtara`` command: find the database, check the inputs,
open the database, run the handler, report a failure as one line.

Files are read and arguments checked before the database is touched, so a
failure writes nothing; the exit status is 0, 1 for a failure, 2 for bad
usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure

from runtara.admin import Admin, AdminError, open_admin
from runtara.cli._commands import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, Command
from runtara.cli._output import Output
from runtara.cli._parser import build_parser
from runtara.config import config_from_env
from runtara.database_url import DatabaseURL
from runtara.errors import DatabaseError, RuntaraError, SchemaTooNew

_DATABASE_VARIABLES = ("RUNTARA_DATABASE_URL", "RUNTARA_STATE_DIR", "XDG_STATE_HOME", "HOME")


class _Refused(Exception):
    """A check made before the database is touched failed; ``str()`` says why."""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``runtara`` console script: run one command, return its exit status."""
    try:
        arguments = build_parser().parse_args(argv)
    except SystemExit as exit:
        return _exit_status(exit)
    output = Output(sys.stdout, sys.stderr, arguments.json)
    _discard_twisted_logs()
    return _run_reactor(lambda reactor: execute(arguments, reactor, output, os.environ), output)


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
