"""``/api/v1``: the management API over ``runtara.admin`` (ENVIRONMENT.md section 6).

The same model as the ``runtara`` command (one model, two front ends): every
endpoint is one or two calls of ``Admin``, and every document is built by
``runtara.documents``, so ``runtara --json`` and the API show the same
fields. ``docs/http-api.md`` shows each endpoint with an example;
``openapi.json`` beside this module describes them for tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from runtara.admin import STATUS_ORDER, Admin
from runtara.documents import (
    bytes_from_json,
    bytes_json,
    checkpoint_json,
    details_json,
    event_json,
    instance_json,
)
from runtara.model import EventType, SignalType
from runtara.web import _params as params
from runtara.web._http import Directory, Endpoint, Handler, Reply, bad_request

OPENAPI_DOCUMENT = "openapi.json"
"""The OpenAPI description of this API, shipped beside this module."""


def api_resource(admin: Admin) -> Directory:
    """``/api``: ``/api/v1/...``."""
    version = Directory()
    version.putChild(b"instances", Instances(admin))
    version.putChild(b"openapi.json", OpenApi())
    api = Directory()
    api.putChild(b"v1", version)
    return api


class OpenApi(Endpoint):
    """``GET /api/v1/openapi.json``."""

    def __init__(self) -> None:
        super().__init__()
        self._document = resources.files(__package__).joinpath(OPENAPI_DOCUMENT).read_bytes()

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.get}

    async def get(self, request: IRequest) -> Reply:
        return Reply(self._document, "application/json; charset=utf-8")


class Instances(Endpoint):
    """``GET /api/v1/instances``; ``/api/v1/instances/{id}/...`` below it."""

    def __init__(self, admin: Admin) -> None:
        super().__init__()
        self._admin = admin

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.list}

    def child(self, segment: bytes, request: IRequest) -> IResource | None:
        return Instance(self._admin, params.identifier(segment, "instance id"))

    async def list(self, request: IRequest) -> dict[str, Any]:
        status = params.choice(request, "status", [status.value for status in STATUS_ORDER])
        tenant = params.query(request, "tenant")
        if tenant is not None:
            params.identifier(tenant, "tenant")
        limit = params.limit(request)
        after = _instance_position(params.decode_cursor(request))
        found = await self._admin.browse_instances(tenant, status, limit, after)
        return {
            "instances": [instance_json(record) for record in found.items],
            "counts": {status.value: count for status, count in found.counts.items()},
            "total": found.total,
            "limit": limit,
            "next_cursor": None if found.after is None else params.encode_cursor(found.after),
        }


def _instance_position(position: Any) -> tuple[int, str] | None:
    if position is None:
        return None
    if (
        isinstance(position, list)
        and len(position) == 2
        and isinstance(position[0], int)
        and isinstance(position[1], str)
    ):
        return position[0], position[1]
    raise bad_request("cursor is not one this server gave (use next_cursor as it is)")


class Instance(Endpoint):
    """``GET /api/v1/instances/{id}`` and what is below it."""

    def __init__(self, admin: Admin, instance_id: str) -> None:
        super().__init__()
        self._admin = admin
        self._id = instance_id

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.show}

    def child(self, segment: bytes, request: IRequest) -> IResource | None:
        children = {
            b"checkpoints": Checkpoints,
            b"events": Events,
            b"signals": Signals,
        }
        kind = children.get(segment)
        return None if kind is None else kind(self._admin, self._id)

    async def show(self, request: IRequest) -> dict[str, Any]:
        return details_json(await self._admin.show_instance(self._id))


class Checkpoints(Endpoint):
    """``GET .../checkpoints`` (newest first) and ``GET .../checkpoints/{cp}``."""

    def __init__(self, admin: Admin, instance_id: str) -> None:
        super().__init__()
        self._admin = admin
        self._id = instance_id

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.list}

    def child(self, segment: bytes, request: IRequest) -> IResource | None:
        return Checkpoint(self._admin, self._id, params.checkpoint_identifier(segment))

    async def list(self, request: IRequest) -> dict[str, Any]:
        limit = params.limit(request)
        offset = params.offset_cursor(request)
        page = await self._admin.list_checkpoints(self._id, limit, offset)
        return {
            "instance_id": self._id,
            "checkpoints": [checkpoint_json(info) for info in page.items],
            "total": page.total,
            "limit": limit,
            "next_cursor": _next_offset(page.has_more, offset, len(page.items)),
        }


class Checkpoint(Endpoint):
    """``GET .../checkpoints/{cp}``: the stored state."""

    def __init__(self, admin: Admin, instance_id: str, checkpoint_id: str) -> None:
        super().__init__()
        self._admin = admin
        self._id = instance_id
        self._checkpoint_id = checkpoint_id

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.get}

    async def get(self, request: IRequest) -> dict[str, Any]:
        state = await self._admin.get_checkpoint(self._id, self._checkpoint_id)
        return {
            "instance_id": self._id,
            "checkpoint_id": self._checkpoint_id,
            "size_bytes": len(state),
            "state": bytes_json(state),
        }


class Events(Endpoint):
    """``GET .../events?type=&subtype=``, newest first."""

    def __init__(self, admin: Admin, instance_id: str) -> None:
        super().__init__()
        self._admin = admin
        self._id = instance_id

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.list}

    async def list(self, request: IRequest) -> dict[str, Any]:
        event_type = params.choice(request, "type", [kind.value for kind in EventType])
        subtype = params.query(request, "subtype")
        limit = params.limit(request)
        offset = params.offset_cursor(request)
        page = await self._admin.list_events(self._id, event_type, subtype, limit, offset)
        return {
            "instance_id": self._id,
            "events": [event_json(event) for event in page.items],
            "total": page.total,
            "limit": limit,
            "next_cursor": _next_offset(page.has_more, offset, len(page.items)),
        }


def _next_offset(has_more: bool, offset: int, count: int) -> str | None:
    return params.encode_cursor(offset + count) if has_more else None


class Signals(Endpoint):
    """``POST .../signals``: ``{"type": cancel|pause|resume, "payload"?}`` or
    ``{"checkpoint_id", "payload"?}`` for a custom signal."""

    def __init__(self, admin: Admin, instance_id: str) -> None:
        super().__init__()
        self._admin = admin
        self._id = instance_id

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"POST": self.send}

    async def send(self, request: IRequest) -> dict[str, Any]:
        body = params.json_body(request)
        payload = _payload(body)
        if "type" in body:
            params.only_fields(body, ("type", "payload"))
            kinds = [kind.value for kind in SignalType]
            if body["type"] not in kinds:
                raise bad_request(f"type must be one of {', '.join(kinds)}; got {body['type']!r}")
            await self._admin.send_signal(self._id, body["type"], payload)
            return {"instance_id": self._id, "type": body["type"], "payload": bytes_json(payload)}
        if "checkpoint_id" in body:
            params.only_fields(body, ("checkpoint_id", "payload"))
            if not isinstance(body["checkpoint_id"], str):
                raise bad_request("checkpoint_id must be a string")
            checkpoint_id = params.checkpoint_identifier(body["checkpoint_id"])
            await self._admin.send_custom_signal(self._id, checkpoint_id, payload)
            return {
                "instance_id": self._id,
                "checkpoint_id": checkpoint_id,
                "payload": bytes_json(payload),
            }
        raise bad_request(
            'the body needs "type" (cancel, pause or resume) or "checkpoint_id" (a custom signal)'
        )


def _payload(body: Mapping[str, Any]) -> bytes:
    if body.get("payload") is None:
        return b""
    try:
        return bytes_from_json(body["payload"])
    except ValueError as error:
        raise bad_request(f"payload {error}") from None
