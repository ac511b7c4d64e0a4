"""From a request body to a response body (PROTOCOL.md sections 3 and 4).

The dispatcher decodes the envelope, finds the operation in the registry,
runs its handler and turns every outcome into exactly one response map.
Declared errors keep their kind and message; anything else is logged once
with its traceback and answered as ``INTERNAL``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from runtara import codec
from runtara.errors import ErrorKind, InternalError, RuntaraError, Unavailable
from runtara.fields import Fields
from runtara.operations import OPERATIONS, CallAbandoned, OperationContext, refuse_anonymous
from runtara.session import Session

EMPTY_REQUEST = "EMPTY_REQUEST"
UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
MALFORMED_REQUEST = "MALFORMED_REQUEST"
MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"


def error_map(code: str, kind: ErrorKind, message: str, retryable: bool = False) -> dict[str, Any]:
    return {"error": {"code": code, "kind": kind.value, "message": message, "retryable": retryable}}


def envelope_error(code: str, message: str) -> bytes:
    """A response body for a request that never reached an operation."""
    return codec.encode(error_map(code, ErrorKind.VALIDATION_ERROR, message))


class Dispatcher:
    _log = Logger()

    def __init__(self, context: OperationContext) -> None:
        self.context = context
        self.accepting = True

    def dispatch(self, session: Session, body: bytes) -> Deferred[bytes]:
        """Fire with the response body for one request body. Never fails,
        except with ``CallAbandoned`` when no answer can be given."""
        return Deferred.fromCoroutine(self._dispatch(session, body))

    async def _dispatch(self, session: Session, body: bytes) -> bytes:
        if not body:
            return envelope_error(MALFORMED_REQUEST, "Request body is empty")
        try:
            request = codec.decode(body)
        except codec.MalformedBody as error:
            return envelope_error(MALFORMED_REQUEST, f"Malformed request: {error}")
        if not isinstance(request, dict):
            return envelope_error(MALFORMED_REQUEST, "Malformed request: body is not a map")
        if not request:
            return envelope_error(EMPTY_REQUEST, "Request is empty")
        if len(request) != 1:
            return envelope_error(
                MALFORMED_REQUEST, "Malformed request: the body must have exactly one key"
            )
        [(name, values)] = request.items()
        operation = OPERATIONS.get(name)
        if operation is None:
            return envelope_error(UNKNOWN_OPERATION, f"Unknown operation '{name}'")
        if not isinstance(values, dict):
            return envelope_error(
                MALFORMED_REQUEST, f"Malformed request: the fields of '{name}' must be a map"
            )
        try:
            if not self.accepting:
                raise Unavailable("Server is shutting down; retry on another connection")
            if operation.needs_registration and not session.registered:
                refuse_anonymous(operation)
            result = await operation.handler(self.context, session, Fields(values))
        except RuntaraError as error:
            answer = error_map(operation.error_code, error.kind, error.message, error.retryable)
        except CallAbandoned:
            raise
        except Exception:
            self._log.failure("operation {operation} failed unexpectedly", operation=operation.name)
            error = InternalError()
            answer = error_map(operation.error_code, error.kind, error.message)
        else:
            answer = {operation.name: result}
        return codec.encode(answer)
