"""The ``runtara`` command's arguments: their value types, and the arguments
several commands share.

An argument is declared as ``argument(*names, **options)``, exactly what
``ArgumentParser.add_argument`` takes; ``one_of`` makes a group of arguments
that exclude each other. A value type raises ``ArgumentTypeError``, which the
parser reports as bad usage (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import Any

from runtara.fields import MAX_CHECKPOINT_ID_BYTES, MAX_INSTANCE_ID_BYTES

DEFAULT_LIMIT = 50
MAX_COUNT = 2**31 - 1
"""The largest ``--limit`` or ``--offset`` accepted."""

_DURATION = re.compile(r"([0-9]+)([smhd])")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

AddArgument = Callable[[Any], None]
"""Adds one argument, or a group of them, to a command's parser."""


def argument(*names: str, **options: Any) -> AddArgument:
    """An argument, declared with ``add_argument``'s own parameters."""

    def add(parser: Any) -> None:
        parser.add_argument(*names, **options)

    return add


def one_of(*arguments: AddArgument) -> AddArgument:
    """Arguments of which at most one may be given."""

    def add(parser: Any) -> None:
        group = parser.add_mutually_exclusive_group()
        for add_argument in arguments:
            add_argument(group)

    return add


# -- value types -------------------------------------------------------------------


def duration(text: str) -> int:
    """``30s``, ``15m``, ``2h``, ``7d`` as seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: write an integer and one unit (s, m, h or d),"
            " e.g. 30s, 15m, 2h or 7d"
        )
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if re.fullmatch(r"[0-9]+", text) and minimum <= int(text) <= MAX_COUNT:
            return int(text)
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected an integer from {minimum} to {MAX_COUNT}"
        )

    return parse


def identifier(what: str, max_bytes: int) -> Callable[[str], str]:
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


tenant_id = identifier("tenant id", MAX_INSTANCE_ID_BYTES)


# -- shared arguments --------------------------------------------------------------

INSTANCE_ID = argument(
    "instance_id", metavar="ID", type=identifier("instance id", MAX_INSTANCE_ID_BYTES)
)
CHECKPOINT_ID = argument(
    "checkpoint_id", metavar="CP", type=identifier("checkpoint id", MAX_CHECKPOINT_ID_BYTES)
)
PAGE = (
    argument(
        "--limit",
        type=count(1),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N (default {DEFAULT_LIMIT})",
    ),
    argument("--offset", type=count(0), default=0, metavar="N", help="skip the first N"),
)
"""``--limit N --offset N`` of a listing."""
PAYLOAD = argument("--payload", metavar="TEXT", type=os.fsencode, default=b"")
