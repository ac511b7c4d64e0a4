"""The ``runtara`` command line, built from the declared commands.

Usage errors are one line on stderr, exit status 2. ``--database`` and
``--json`` are accepted before the command and after it.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from runtara import __version__
from runtara.cli._commands import COMMANDS, EXIT_USAGE, GROUPS, Command
from runtara.cli._output import one_line


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2.

    A word that starts with ``-`` and a digit is a value, never an option
    (runtara has no such option): ``--older-than -5m`` is an invalid duration,
    not a missing one (Python 3.14's argparse reads it so by itself).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"-\.?[0-9]")

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``runtara``'s command line.

    A parsed command line has ``command`` (the ``Command`` to run),
    ``database`` and ``json``, and the command's own arguments.
    """
    parser = _Parser(
        prog="runtara",
        description="Manage a runtara database: instances, checkpoints, events, signals.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"runtara {__version__}")
    _global_options(parser, leaf=False)
    commands = parser.add_subparsers(metavar="COMMAND", required=True, dest="command_name")
    groups: dict[str, Any] = {}
    for line in COMMANDS:
        *group, name = line.words
        parent = commands
        if group:
            (group_name,) = group
            if group_name not in groups:
                groups[group_name] = _group(commands, group_name, GROUPS[group_name])
            parent = groups[group_name]
        leaf = _leaf(parent, name, line.help, line.command)
        for add_argument in line.arguments:
            add_argument(leaf)
    return parser


_ENVIRONMENT = """\
environment:
  RUNTARA_DATABASE_URL  the database when --database is not given
  RUNTARA_STATE_DIR     the server's state directory (default:
                        $XDG_STATE_HOME/runtara, else ~/.local/state/runtara);
                        without --database and RUNTARA_DATABASE_URL, its
                        runtara.db is the database
  RUNTARA_QUIC_HOST, RUNTARA_QUIC_PORT, RUNTARA_TLS_CERT
                        where `runtara health` looks for the server and its
                        certificate, as runtara-core reads them
"""


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
        "embedded database, runtara.db in $RUNTARA_STATE_DIR)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if leaf else False,
        help="print one JSON document instead of a table",
    )


def _group(parent: Any, name: str, help_text: str) -> Any:
    """A command with subcommands (``instances``, ``checkpoints``, ``events``)."""
    parser = parent.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(metavar="COMMAND", required=True, dest=f"{name}_command")


def _leaf(parent: Any, name: str, help_text: str, command: Command) -> argparse.ArgumentParser:
    """A command's parser, with the global options and its ``Command``."""
    parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
    _global_options(parser, leaf=True)
    parser.set_defaults(command=command)
    return parser
