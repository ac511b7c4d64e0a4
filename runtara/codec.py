"""Strict msgpack for frame bodies (PROTOCOL.md section 2).

A body is ONE msgpack object: trailing bytes, invalid UTF-8 in a ``str``, a
map key that is not a ``str``, an extension type, or containers nested deeper
than ``MAX_DEPTH`` (the body itself is level 1) make it malformed.
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_DEPTH = 32


class MalformedBody(ValueError):
    """The bytes are not one strictly valid msgpack object."""


def _reject_extension(code: int, data: bytes) -> Any:
    raise MalformedBody(f"msgpack extension type {code} is not allowed")


def decode(body: bytes) -> Any:
    """Decode ``body`` strictly; raise ``MalformedBody`` with a short reason."""
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            ext_hook=_reject_extension,
            timestamp=0,
        )
    except MalformedBody:
        raise
    except msgpack.ExtraData:
        raise MalformedBody("trailing bytes after the msgpack object") from None
    except UnicodeDecodeError:
        raise MalformedBody("invalid UTF-8 in a msgpack str") from None
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise MalformedBody(f"invalid msgpack ({type(error).__name__})") from None
    _check_structure(value)
    return value


def _check_structure(value: Any) -> None:
    """Enforce string map keys, no extension values and the depth limit."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise MalformedBody(f"containers nested deeper than {MAX_DEPTH} levels")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise MalformedBody("map keys must be str")
                pending.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise MalformedBody(f"containers nested deeper than {MAX_DEPTH} levels")
            pending.extend((child, depth + 1) for child in item)
        elif isinstance(item, msgpack.Timestamp):
            raise MalformedBody("msgpack extension type -1 is not allowed")


def encode(value: Any) -> bytes:
    """Encode with ``bin`` for bytes and ``str`` for text."""
    return msgpack.packb(value, use_bin_type=True)
