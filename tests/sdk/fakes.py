"""A test double for ``InstanceSession``'s unit tests: ``FakeLink``, one
connection as the session sees it, which answers with canned maps and can
be lost at any moment the test chooses.

It stands for the transport only: every operation's behaviour is tested on
a real server (``tests/sdk/live.py``), never on an in-memory imitation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from runtara.client import RemoteError
from runtara.quic.client import QuicConnectionError, Termination

Handler = Callable[[str, dict[str, Any]], Any]


class FakeLink:
    """A connection that answers calls with ``handler(operation, fields)``.

    The handler returns a result map, raises (``RemoteError``...), or
    returns a Deferred for an answer the test fires later. ``terminate``
    loses the connection: pending calls fail, ``when_closed`` fires.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.pending: list[Deferred[dict[str, Any]]] = []
        self.closed = False
        self._closed: Deferred[Termination] = Deferred()

    def call(self, operation: str, fields: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self.calls.append((operation, fields))
        if self.closed:
            return fail(QuicConnectionError(0, "connection is closed"))
        try:
            answer = self.handler(operation, fields)
        except Exception as error:
            return fail(error)
        if isinstance(answer, Deferred):
            self.pending.append(answer)
            return answer
        return succeed(answer)

    def operations(self) -> list[str]:
        return [operation for operation, _ in self.calls]

    def terminate(self, reason: str = "Idle timeout") -> None:
        if self.closed:
            return
        self.closed = True
        for answer in self.pending:
            if not answer.called:
                answer.errback(QuicConnectionError(1, reason))
        self._closed.callback(Termination(1, reason, False))

    def close(self) -> Deferred[None]:
        self.terminate("closed by the client")
        return succeed(None)

    def when_closed(self) -> Deferred[Termination]:
        observer: Deferred[Termination] = Deferred()
        self._closed.addCallback(lambda termination: observer.callback(termination) or termination)
        return observer


def server_handler(**answers: Any) -> Handler:
    """A handler that registers successfully and answers ``operation`` with ``answers[op]``
    (a map, an exception to raise, or a callable taking the fields)."""

    def handle(operation: str, fields: dict[str, Any]) -> Any:
        if operation == "register_instance" and operation not in answers:
            return {"success": True, "error": "", "status": "running", "resumed": False}
        answer = answers[operation]
        if isinstance(answer, Exception):
            raise answer
        return answer(fields) if callable(answer) else answer

    return handle


def retryable_error(kind: str = "UNAVAILABLE") -> RemoteError:
    return RemoteError("CHECKPOINT_ERROR", kind, "try again later", True)


def fired(deferred: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired; its exception raised if it failed."""
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    result = outcome[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result
