"""The ``runtara`` command line, built from the declared commands.

Usage errors are one line on stderr, exit status 2. ``--database`` and
``--json`` are accepted before the command and after it.
"""

from __future__ import annotations

import argparse
from typing import Any

from runtara import __version__
from runtara.cli._commands import COMMANDS, EXIT_USAGE, GROUPS, Command
from runtara.cli._output import one_line


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2."""

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
