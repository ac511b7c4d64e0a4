"""Test doubles for the SDK's unit tests: they record what happened.

``FakeClient`` keeps an instance's server-side state in memory with the
protocol's rules (save-or-return checkpoints, consumed custom signals,
acknowledged signals, durable sleeps on a ``task.Clock``), so ``Workflow``
and the runner can be tested without a server. ``FakeLink`` is one
connection as ``InstanceSession`` sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater

from runtara.client import RemoteError
from runtara.model import (
    AckResult,
    CheckpointResult,
    CustomSignal,
    EventType,
    PendingSignal,
    Registration,
    ReplayIndex,
    RetryAttempt,
    Signals,
    SignalType,
    Status,
)
from runtara.quic.client import QuicConnectionError, Termination
from runtara.sdk.results import SleepResult


class FakeClient:
    """One instance's server-side state, behind the ``WorkflowClient`` methods."""

    def __init__(self, clock: Clock, instance_id: str = "i-1") -> None:
        self.clock = clock
        self.instance_id = instance_id
        self.status = Status.RUNNING
        self.checkpoints: dict[str, bytes] = {}
        self.custom_signals: dict[str, bytes] = {}
        self.signal_ids: dict[str, int] = {}
        self.sent_custom_signals = 0
        self.pending: PendingSignal | None = None
        self.events: list[tuple[EventType, bytes]] = []
        self.attempts: list[tuple[str, int, str | None]] = []
        self.sleep_until_ms: int | None = None
        self.calls: list[str] = []
        self.heartbeats = "off"
        self.registration: Registration | None = None
        """The latest registration: None, as from a server without replay indexes."""

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def send_signal(self, signal_type: SignalType, payload: bytes = b"") -> None:
        self.pending = PendingSignal(signal_type, payload)

    async def checkpoint(
        self, checkpoint_id: str, state: bytes, *, received: CustomSignal | None = None
    ) -> CheckpointResult:
        self.calls.append(f"checkpoint {checkpoint_id}")
        assert self.status is Status.RUNNING, self.status
        found = checkpoint_id in self.checkpoints
        stored = self.checkpoints.setdefault(checkpoint_id, state)
        if not found and received is not None:
            pending = self.custom_signals.get(received.checkpoint_id)
            if pending is not None and self.signal_ids[received.checkpoint_id] == (
                received.signal_id
            ):
                del self.custom_signals[received.checkpoint_id]
        custom = self.custom_signals.pop(checkpoint_id, None)
        return CheckpointResult(
            found=found,
            state=stored if found else b"",
            pending_signal=self.pending,
            custom_signal=None if custom is None else CustomSignal(checkpoint_id, custom),
        )

    def restart(self, *, replay_index: bool = True) -> None:
        """A new run registers: with ``replay_index``, its registration carries the index."""
        index = None
        if replay_index:
            unfinished = {
                checkpoint_id: self.last_attempt(checkpoint_id)
                for checkpoint_id, _, _ in self.attempts
                if checkpoint_id not in self.checkpoints
            }
            index = ReplayIndex(frozenset(self.checkpoints), unfinished)
        self.registration = Registration(True, Status.RUNNING, bool(self.checkpoints), "", index)
        self.calls.clear()

    def last_attempt(self, checkpoint_id: str) -> RetryAttempt | None:
        recorded = [(n, message) for cp, n, message in self.attempts if cp == checkpoint_id]
        return RetryAttempt(*max(recorded)) if recorded else None

    async def get_checkpoint(
        self, checkpoint_id: str, *, last_attempt: bool = False
    ) -> CheckpointResult:
        self.calls.append(f"get_checkpoint {checkpoint_id}")
        state = self.checkpoints.get(checkpoint_id)
        attempt = self.last_attempt(checkpoint_id) if last_attempt else None
        return CheckpointResult(found=state is not None, state=state or b"", last_attempt=attempt)

    async def sleep(self, duration_ms: int, checkpoint_id: str, state: bytes = b"") -> SleepResult:
        self.calls.append(f"sleep {checkpoint_id}")
        called_at = self.now_ms()
        if checkpoint_id not in self.checkpoints:
            self.checkpoints[checkpoint_id] = state
            self.sleep_until_ms = called_at + duration_ms
        elif self.sleep_until_ms is None:
            return SleepResult(0, called_at)
        wake_at = self.sleep_until_ms
        self.status = Status.SUSPENDED
        await deferLater(self.clock, max(0, wake_at - called_at) / 1000)
        self.status = Status.RUNNING
        self.sleep_until_ms = None
        return SleepResult(self.now_ms() - called_at, wake_at)

    async def instance_event(
        self,
        event_type: EventType | str,
        payload: bytes = b"",
        *,
        checkpoint_id: str | None = None,
        subtype: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        event_type = EventType(event_type)
        self.calls.append(f"instance_event {event_type.value}")
        self.events.append((event_type, payload))
        if event_type is EventType.COMPLETED:
            self.status = Status.COMPLETED
        elif event_type is EventType.FAILED:
            self.status = Status.FAILED
        elif event_type is EventType.SUSPENDED:
            self.status = Status.SUSPENDED

    def send_custom_signal(self, checkpoint_id: str, payload: bytes) -> None:
        self.sent_custom_signals += 1
        self.custom_signals[checkpoint_id] = payload
        self.signal_ids[checkpoint_id] = self.sent_custom_signals

    async def poll_signals(
        self, checkpoint_id: str | None = None, *, peek: bool = False
    ) -> Signals:
        self.calls.append(f"poll_signals {checkpoint_id}" + (" peek" if peek else ""))
        custom = None
        if checkpoint_id is not None and checkpoint_id in self.custom_signals:
            if peek:
                payload = self.custom_signals[checkpoint_id]
                custom = CustomSignal(checkpoint_id, payload, self.signal_ids[checkpoint_id])
            else:
                custom = CustomSignal(checkpoint_id, self.custom_signals.pop(checkpoint_id))
        return Signals(signal=self.pending, custom_signal=custom)

    async def signal_ack(
        self, signal_type: SignalType | str, acknowledged: bool = True
    ) -> AckResult:
        signal_type = SignalType(signal_type)
        self.calls.append(f"signal_ack {signal_type.value}")
        if self.pending is None or self.pending.signal_type is not signal_type:
            return AckResult(False, self.status)
        self.pending = None
        if signal_type is SignalType.CANCEL:
            self.status = Status.CANCELLED
        elif signal_type is SignalType.PAUSE:
            self.status = Status.SUSPENDED
        return AckResult(True, self.status)

    async def retry_attempt(
        self,
        checkpoint_id: str,
        attempt_number: int,
        error_message: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        self.calls.append(f"retry_attempt {checkpoint_id} {attempt_number}")
        self.attempts.append((checkpoint_id, attempt_number, error_message))

    def start_heartbeats(self) -> None:
        self.heartbeats = "on"

    def stop_heartbeats(self) -> None:
        self.heartbeats = "stopped"


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
