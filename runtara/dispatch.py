"""From a request body to a response body (PROTOCOL.md sections 3 and 4).

The dispatcher decodes the envelope, finds the operation in the registry,
runs its handler and turns every outcome into exactly one response map.
Declared errors keep their kind and message; anything else is logged once
with its traceback and answered as ``INTERNAL``. With ``metrics``, every
answer is counted by operation and outcome (``ok`` or the error kind in
lower case) and its latency observed; a request refused before it names a
known operation counts under the operation ``invalid``, with its refusal
code as the outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from runtara import codec
from runtara.errors import ErrorKind, InternalError, RuntaraError, Unavailable
from runtara.fields import Fields
from runtara.metrics import ABANDONED, INVALID_REQUEST, OK
from runtara.operations import (
    OPERATIONS,
    CallAbandoned,
    Operation,
    OperationContext,
    refuse_anonymous,
)
from runtara.session import Session

if TYPE_CHECKING:
    from runtara.metrics import Metrics

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

    def __init__(self, context: OperationContext, metrics: Metrics | None = None) -> None:
        self.context = context
        self.accepting = True
        self._metrics = metrics

    def dispatch(self, session: Session, body: bytes) -> Deferred[bytes]:
        """Fire with the response body for one request body. Never fails,
        except with ``CallAbandoned`` when no answer can be given."""
        return Deferred.fromCoroutine(self._dispatch(session, body))

    async def _dispatch(self, session: Session, body: bytes) -> bytes:
        request = _envelope(body)
        if isinstance(request, _Refusal):
            self._count(INVALID_REQUEST, request.code.lower(), None)
            return envelope_error(request.code, request.message)
        operation, values = request
        started = None if self._metrics is None else self._metrics.now()
        try:
            if not self.accepting:
                raise Unavailable("Server is shutting down; retry on another connection")
            if operation.needs_registration and not session.registered:
                refuse_anonymous(operation)
            result = await operation.handler(self.context, session, Fields(values))
        except RuntaraError as error:
            self._count(operation.name, error.kind.value.lower(), started)
            answer = error_map(operation.error_code, error.kind, error.message, error.retryable)
        except CallAbandoned:
            self._count(operation.name, ABANDONED, started)
            raise
        except Exception:
            self._log.failure("operation {operation} failed unexpectedly", operation=operation.name)
            error = InternalError()
            self._count(operation.name, error.kind.value.lower(), started)
            answer = error_map(operation.error_code, error.kind, error.message)
        else:
            self._count(operation.name, OK, started)
            answer = {operation.name: result}
        return codec.encode(answer)

    def _count(self, operation: str, outcome: str, started: float | None) -> None:
        if self._metrics is not None:
            self._metrics.observe_operation(operation, outcome, started)


class _Refusal:
    """Why a request body names no operation that can run."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


def _envelope(body: bytes) -> tuple[Operation, dict[Any, Any]] | _Refusal:
    """The operation a request body names and its fields, or why there is none."""
    if not body:
        return _Refusal(MALFORMED_REQUEST, "Request body is empty")
    try:
        request = codec.decode(body)
    except codec.MalformedBody as error:
        return _Refusal(MALFORMED_REQUEST, f"Malformed request: {error}")
    if not isinstance(request, dict):
        return _Refusal(MALFORMED_REQUEST, "Malformed request: body is not a map")
    if not request:
        return _Refusal(EMPTY_REQUEST, "Request is empty")
    if len(request) != 1:
        return _Refusal(MALFORMED_REQUEST, "Malformed request: the body must have exactly one key")
    [(name, values)] = request.items()
    operation = OPERATIONS.get(name)
    if operation is None:
        return _Refusal(UNKNOWN_OPERATION, f"Unknown operation '{name}'")
    if not isinstance(values, dict):
        return _Refusal(
            MALFORMED_REQUEST, f"Malformed request: the fields of '{name}' must be a map"
        )
    return operation, values
