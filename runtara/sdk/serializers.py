"""Serializers: how step results and workflow outputs become checkpoint bytes.

Any object with ``encode(value) -> bytes`` and ``decode(data) -> value``
(the ``Serializer`` protocol) can be passed to a workflow or a single step.
Both must raise ``SerializationError`` for what they cannot handle, and
``decode(encode(value))`` must give back an equal value (the SDK returns the
decoded value even on the first run, so a first run and a replay see the
same thing).
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

import msgpack

from runtara.sdk.errors import SerializationError

__all__ = ["JsonSerializer", "MsgpackSerializer", "Serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back."""

    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``; ``SerializationError`` if it has no encoding."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value of ``data``; ``SerializationError`` if the bytes are invalid."""
        ...


class MsgpackSerializer:
    """msgpack (the default): None, bool, int, float, str, bytes, lists and str-keyed maps.

    Tuples come back as lists. Anything else raises ``SerializationError``.
    """

    def encode(self, value: Any) -> bytes:
        try:
            return msgpack.packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as error:
            raise SerializationError(f"cannot encode {type(value).__name__}: {error}") from None

    def decode(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            raise SerializationError(f"cannot decode msgpack: {error}") from None


class JsonSerializer:
    """JSON text in UTF-8: readable checkpoints (``runtara checkpoints get`` shows them as text).

    No bytes; tuples come back as lists and map keys as strings.
    """

    def encode(self, value: Any) -> bytes:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8")
        except (TypeError, ValueError) as error:
            raise SerializationError(f"cannot encode {type(value).__name__}: {error}") from None

    def decode(self, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise SerializationError(f"cannot decode JSON: {error}") from None
