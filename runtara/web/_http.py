"""JSON over ``twisted.web``: replies, errors, and the base of every endpoint.

An ``Endpoint`` is a ``twisted.web`` resource whose methods are ``async``
handlers. A handler returns a JSON-able document (answered ``200``) or a
``Reply``; it raises ``ApiError`` for a refusal of its own, and the
persistence's ``RuntaraError`` become the matching HTTP error (unknown
instance 404, terminal instance 409, ...). Every error is the body
``{"error": {"code", "message"}}``; anything unexpected is logged once with
its traceback and answered ``500``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from runtara.errors import ErrorKind, RuntaraError

JSON = "application/json; charset=utf-8"

_STATUS_OF_KIND = {
    ErrorKind.INSTANCE_NOT_FOUND: 404,
    ErrorKind.CHECKPOINT_NOT_FOUND: 404,
    ErrorKind.INVALID_INSTANCE_STATE: 409,
    ErrorKind.INSTANCE_ALREADY_EXISTS: 409,
    ErrorKind.VALIDATION_ERROR: 400,
}
"""HTTP status of the persistence's errors; any other kind is a 500."""


class ApiError(Exception):
    """A refusal: answered with ``status`` and ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> ApiError:
    """A 400: the request is malformed or names something that cannot exist."""
    return ApiError(400, "invalid_request", message)


@dataclass(frozen=True)
class Reply:
    """A response other than a ``200`` JSON document."""

    body: bytes
    content_type: str = JSON
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, document: Any, status: int = 200, **headers: str) -> Reply:
        return cls(json_bytes(document), JSON, status, headers)


def json_bytes(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON text ending in a newline."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_reply(error: ApiError) -> Reply:
    return Reply.json({"error": {"code": error.code, "message": error.message}}, error.status)


def api_error(error: RuntaraError) -> ApiError:
    """The HTTP error for a ``RuntaraError`` of the persistence (or the protocol)."""
    return ApiError(_STATUS_OF_KIND.get(error.kind, 500), error.kind.value.lower(), error.message)


def write_reply(request: IRequest, reply: Reply) -> None:
    """Send ``reply`` and finish the request (unless the client went away)."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.setResponseCode(reply.status)
    request.setHeader(b"content-type", reply.content_type.encode())
    request.setHeader(b"cache-control", b"no-store")
    for name, value in reply.headers.items():
        request.setHeader(name.encode(), value.encode())
    request.setHeader(b"content-length", str(len(reply.body)).encode())
    request.write(reply.body)
    request.finish()


Handler = Callable[[IRequest], Awaitable[Any]]


class Endpoint(Resource):
    """A resource whose HTTP methods are ``async`` handlers (see the module docstring).

    Subclasses give ``handlers()``; GET also answers HEAD. A method without
    a handler is answered ``405`` with the ``Allow`` header. A trailing
    slash names the same endpoint; any other child is ``404`` unless the
    subclass's ``child`` finds one.
    """

    _log = Logger()

    def handlers(self) -> Mapping[bytes, Handler]:
        raise NotImplementedError

    def child(self, segment: bytes, request: IRequest) -> IResource | None:
        """The resource under this one named ``segment``, or None; may raise ``ApiError``."""
        return None

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"" and not request.postpath:
            return self
        try:
            found = self.child(path, request)
        except ApiError as error:
            return Refusal(error)
        return NOT_FOUND if found is None else found

    def render(self, request: IRequest) -> int:
        handlers = self.handlers()
        method = b"GET" if request.method == b"HEAD" else request.method
        handler = handlers.get(method)
        if handler is None:
            allowed = {name.decode() for name in handlers}
            allowed_list = ", ".join(sorted(allowed | ({"HEAD"} if "GET" in allowed else set())))
            refusal = ApiError(
                405,
                "method_not_allowed",
                f"{request.method.decode('latin-1')} is not allowed here; use {allowed_list}",
            )
            reply = error_reply(refusal)
            write_reply(
                request, Reply(reply.body, reply.content_type, 405, {"allow": allowed_list})
            )
            return NOT_DONE_YET
        Deferred.fromCoroutine(self._respond(request, handler))
        return NOT_DONE_YET

    async def _respond(self, request: IRequest, handler: Handler) -> None:
        try:
            result = await handler(request)
        except ApiError as error:
            reply = error_reply(error)
        except RuntaraError as error:
            reply = error_reply(api_error(error))
        except Exception:
            self._log.failure(
                "HTTP {method} {path} failed unexpectedly",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
            )
            reply = error_reply(ApiError(500, "internal", "Internal server error"))
        else:
            reply = result if isinstance(result, Reply) else Reply.json(result)
        write_reply(request, reply)


class Refusal(Resource):
    """A leaf that answers every request with one error."""

    isLeaf = True

    def __init__(self, error: ApiError) -> None:
        super().__init__()
        self._reply = error_reply(error)

    def render(self, request: IRequest) -> int:
        write_reply(request, self._reply)
        return NOT_DONE_YET


NOT_FOUND = Refusal(ApiError(404, "not_found", "No such endpoint"))


class Directory(Resource):
    """A resource that only holds children (``putChild``); anything else is 404."""

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return NOT_FOUND

    def render(self, request: IRequest) -> int:
        return NOT_FOUND.render(request)
