"""Exceptions the SDK raises.

``RemoteError`` (an error response from the server, re-exported from
``runtara.client``) keeps the code, kind, message and retryable flag the
server sent. The workflow interruptions derive from ``BaseException``, like
``asyncio.CancelledError``, so a workflow's ``except Exception`` does not
swallow a cancel or a pause by accident.
"""

from __future__ import annotations

from runtara.client import RemoteError
from runtara.model import Status
from runtara.settings import ConfigurationError

__all__ = [
    "RegistrationRefused",
    "RemoteError",
    "RetriesExhausted",
    "SdkConfigError",
    "SdkError",
    "SerializationError",
    "ServerUnreachable",
    "SessionClosed",
    "SignalTimeout",
    "WorkflowCancelled",
    "WorkflowInterrupted",
    "WorkflowPaused",
]


class SdkError(Exception):
    """Base class of the SDK's own errors."""


class SdkConfigError(SdkError, ConfigurationError):
    """An SDK setting is invalid; ``str()`` is one line naming the variable."""


class RegistrationRefused(SdkError):
    """The server refused to register the instance (PROTOCOL.md 6.1, in-band).

    ``status`` is the instance's status as the server reported it, e.g.
    ``Status.COMPLETED`` for ``Instance 'i-1' is already completed``.
    """

    def __init__(self, instance_id: str, reason: str, status: Status) -> None:
        super().__init__(f"registration of instance '{instance_id}' refused: {reason}")
        self.instance_id = instance_id
        self.reason = reason
        self.status = status


class ServerUnreachable(SdkError):
    """No registered connection to the server could be (re)established in time."""

    def __init__(self, seconds: float, last_error: BaseException | None) -> None:
        detail = f": {last_error}" if last_error is not None else ""
        super().__init__(f"runtara-core unreachable for {seconds:g} s{detail}")
        self.seconds = seconds
        self.last_error = last_error


class SessionClosed(SdkError):
    """The client was closed; no more calls can be made with it."""


class SerializationError(SdkError, ValueError):
    """A value could not be encoded to (or decoded from) bytes by a serializer."""


class SignalTimeout(SdkError):
    """``wait_for_signal`` reached its durable deadline without a signal."""

    def __init__(self, name: str, deadline_ms: int) -> None:
        super().__init__(f"no signal '{name}' arrived before its deadline ({deadline_ms} ms)")
        self.name = name
        self.deadline_ms = deadline_ms


class RetriesExhausted(SdkError):
    """A step's retry policy allows no more attempts: they were used up before a restart.

    ``attempts`` is how many failed attempts were recorded, ``last_error``
    the error of the last one (``Type: message``, as recorded).
    """

    def __init__(self, name: str, attempts: int, max_attempts: int, last_error: str | None) -> None:
        detail = f"; the last failed with {last_error}" if last_error else ""
        super().__init__(
            f"step '{name}' already failed {attempts} of the {max_attempts} attempts"
            f" its retry policy allows{detail}"
        )
        self.name = name
        self.attempts = attempts
        self.max_attempts = max_attempts
        self.last_error = last_error


class WorkflowInterrupted(BaseException):
    """The workflow must stop now: an operator's signal was acknowledged."""

    status: Status

    def __init__(self, instance_id: str, payload: bytes = b"") -> None:
        super().__init__(f"instance '{instance_id}' is {self.status.value}")
        self.instance_id = instance_id
        self.payload = payload


class WorkflowCancelled(WorkflowInterrupted):
    """A cancel signal was acknowledged: the instance is ``cancelled`` (terminal)."""

    status = Status.CANCELLED


class WorkflowPaused(WorkflowInterrupted):
    """A pause signal was acknowledged: the instance is ``suspended``.

    Running the workflow again (registering the instance again) resumes it
    from its checkpoints.
    """

    status = Status.SUSPENDED
