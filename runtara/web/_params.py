"""Reading what a request carries: path segments, query parameters, JSON bodies, cursors.

Every reader raises a 400 ``ApiError`` naming what is wrong, before
anything is read from or written to the database.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from typing import Any

from twisted.web.iweb import IRequest

from runtara.fields import MAX_CHECKPOINT_ID_BYTES, MAX_INSTANCE_ID_BYTES
from runtara.web._http import ApiError, bad_request

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body read (a custom signal's payload travels in it)."""


def identifier(raw: bytes | str, what: str, max_bytes: int = MAX_INSTANCE_ID_BYTES) -> str:
    """A non-empty UTF-8 identifier of at most ``max_bytes`` bytes (PROTOCOL.md section 6)."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"the {what} is not valid UTF-8") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the {what} is not valid UTF-8") from None
    if not 0 < len(raw) <= max_bytes:
        raise bad_request(f"the {what} must be 1 to {max_bytes} bytes long, got {len(raw)}")
    return text


def checkpoint_identifier(raw: bytes | str) -> str:
    return identifier(raw, "checkpoint id", MAX_CHECKPOINT_ID_BYTES)


def query(request: IRequest, name: str) -> str | None:
    """The query parameter ``name`` as text; None when absent or empty."""
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"the query parameter {name!r} is given more than once")
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the query parameter {name!r} is not valid UTF-8") from None
    return text or None


def choice(request: IRequest, name: str, choices: Collection[str]) -> str | None:
    value = query(request, name)
    if value is not None and value not in choices:
        raise bad_request(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def limit(request: IRequest) -> int:
    """``limit``: 1 to ``MAX_LIMIT``, ``DEFAULT_LIMIT`` when absent."""
    value = query(request, "limit")
    if value is None:
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIMIT}; got {value!r}")
    return int(value)


def encode_cursor(position: Any) -> str:
    """An opaque cursor for ``position`` (any JSON value)."""
    text = json.dumps(position, ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def decode_cursor(request: IRequest) -> Any:
    """The position in the ``cursor`` parameter (None when absent); 400 when not ours."""
    value = query(request, "cursor")
    if value is None:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        raise bad_request("cursor is not one this server gave (use next_cursor as it is)") from None


def offset_cursor(request: IRequest) -> int:
    """The offset in a cursor made by ``encode_cursor(offset)``; 0 without a cursor."""
    position = decode_cursor(request)
    if position is None:
        return 0
    if isinstance(position, int) and not isinstance(position, bool) and position >= 0:
        return position
    raise bad_request("cursor is not one this server gave (use next_cursor as it is)")


def json_body(request: IRequest) -> dict[str, Any]:
    """The request body: one JSON object (400 ``invalid_json`` otherwise)."""
    content = request.content
    body = b"" if content is None else content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return document


def only_fields(document: dict[str, Any], allowed: Collection[str]) -> None:
    unknown = sorted(set(document) - set(allowed))
    if unknown:
        raise bad_request(
            f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(allowed))}"
        )
