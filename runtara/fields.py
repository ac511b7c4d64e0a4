"""Typed access to the fields of a request (PROTOCOL.md section 3).

Unknown fields are ignored; an absent optional field and ``nil`` mean the
same; a field of the wrong type raises ``ValidationError`` naming it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeVar

from runtara.errors import ValidationError

MAX_INSTANCE_ID_BYTES = 256
MAX_CHECKPOINT_ID_BYTES = 512
MAX_RUN_ID_BYTES = 256

_E = TypeVar("_E", bound=enum.Enum)

_TYPE_NAMES = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    dict: "map",
    type(None): "nil",
}


def _describe(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Fields:
    """The field map of one operation, read field by field.

    ``prefix`` names the map a nested one belongs to (``receive_signal.``),
    so that errors name the field in full.
    """

    def __init__(self, values: Mapping[str, Any], prefix: str = "") -> None:
        self._values = values
        self._prefix = prefix

    def _get(self, name: str, required: bool) -> Any:
        value = self._values.get(name)
        if value is None and required:
            raise ValidationError(self._prefix + name, "is required")
        return value

    def _invalid(self, name: str, problem: str) -> ValidationError:
        return ValidationError(self._prefix + name, problem)

    def str(self, name: str, *, required: bool = True, max_bytes: int | None = None) -> Any:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._invalid(name, f"expected str, got {_describe(value)}")
        if max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
            raise self._invalid(name, f"must be at most {max_bytes} bytes")
        return value

    def id(self, name: str, max_bytes: int, *, required: bool = True) -> Any:
        """A non-empty identifier of at most ``max_bytes`` UTF-8 bytes."""
        value = self.str(name, required=required, max_bytes=max_bytes)
        if value == "":
            raise self._invalid(name, "must not be empty")
        return value

    def instance_id(self) -> str:
        return self.id("instance_id", MAX_INSTANCE_ID_BYTES)

    def checkpoint_id(self, *, required: bool = True) -> Any:
        return self.id("checkpoint_id", MAX_CHECKPOINT_ID_BYTES, required=required)

    def bytes(self, name: str, *, required: bool = True) -> Any:
        """A ``bin`` field; when not required, absent means empty."""
        value = self._get(name, required)
        if value is None:
            return b""
        if not isinstance(value, bytes):
            raise self._invalid(name, f"expected bin, got {_describe(value)}")
        return value

    def int(self, name: str, *, required: bool = True, minimum: int | None = None) -> Any:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._invalid(name, f"expected int, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise self._invalid(name, f"must be >= {minimum}")
        return value

    def bool(self, name: str, *, required: bool = True) -> bool:
        """A ``bool`` field; when not required, absent means False."""
        value = self._get(name, required)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._invalid(name, f"expected bool, got {_describe(value)}")
        return value

    def enum(self, name: str, kind: type[_E], allowed: frozenset[_E] | None = None) -> _E:
        value = self.str(name)
        choices = allowed if allowed is not None else frozenset(kind)
        for member in choices:
            if member.value == value:
                return member
        names = ", ".join(sorted(member.value for member in choices))
        raise self._invalid(name, f"must be one of {names}, got '{value}'")

    def map(self, name: str) -> Fields | None:
        """An optional nested map, read with its own ``Fields``; None when absent."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._invalid(name, f"expected map, got {_describe(value)}")
        return Fields(value, f"{self._prefix}{name}.")

    def list(self, name: str) -> list[Any]:
        value = self._get(name, True)
        if not isinstance(value, list):
            raise self._invalid(name, f"expected array, got {_describe(value)}")
        return value
