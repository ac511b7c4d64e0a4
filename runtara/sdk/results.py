"""Typed answers of the protocol operations, built from the wire maps.

The values shared with the server (``Status``, ``SignalType``,
``EventType``, ``PendingSignal``, ``CustomSignal``, ``Registration``,
``CheckpointResult``, ``Signals``, ``AckResult``, ``Event``) come from
``runtara.model``; this module adds the answers only a client sees and the
functions that read every answer map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtara.model import (
    AckResult,
    CheckpointResult,
    CustomSignal,
    PendingSignal,
    Registration,
    ReplayIndex,
    RetryAttempt,
    Signals,
    SignalType,
    Status,
)

__all__ = [
    "BatchError",
    "BatchResult",
    "Health",
    "InstanceStatus",
    "SleepResult",
    "ack_result",
    "batch_result",
    "checkpoint_result",
    "health",
    "instance_status",
    "registration",
    "signals",
    "sleep_result",
]


@dataclass(frozen=True)
class SleepResult:
    """The answer to ``sleep`` (PROTOCOL.md 6.4), sent when the sleep ended.

    ``slept_ms`` is 0 when the sleep had already ended in an earlier run;
    ``wake_at_ms`` is the (original) time the instance was due to wake.
    """

    slept_ms: int
    wake_at_ms: int


@dataclass(frozen=True)
class InstanceStatus:
    """The answer to ``get_instance_status`` (PROTOCOL.md 6.7)."""

    instance_id: str
    status: Status
    checkpoint_id: str | None = None
    started_at_ms: int = 0
    finished_at_ms: int | None = None
    sleep_until_ms: int | None = None
    output: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class BatchError:
    """One event of a batch that was not recorded."""

    index: int
    kind: str
    message: str


@dataclass(frozen=True)
class BatchResult:
    """The answer to ``instance_event_batch`` (PROTOCOL.md 6.6)."""

    accepted: int
    errors: tuple[BatchError, ...] = field(default=())


@dataclass(frozen=True)
class Health:
    """The answer to ``health`` (PROTOCOL.md 6.11)."""

    version: str
    protocol: int
    uptime_ms: int
    database: str


def registration(answer: dict[str, Any]) -> Registration:
    """The register_instance answer map as a typed value."""
    return Registration(
        success=bool(answer.get("success")),
        status=_status(answer.get("status")),
        resumed=bool(answer.get("resumed")),
        error=str(answer.get("error") or ""),
        replay_index=_replay_index(answer.get("replay_index")),
    )


def checkpoint_result(answer: dict[str, Any]) -> CheckpointResult:
    """The checkpoint / get_checkpoint answer map as a typed value."""
    return CheckpointResult(
        found=bool(answer.get("found")),
        state=bytes(answer.get("state") or b""),
        pending_signal=_pending_signal(answer.get("pending_signal")),
        custom_signal=_custom_signal(answer.get("custom_signal")),
        last_attempt=_retry_attempt(answer.get("last_attempt")),
    )


def sleep_result(answer: dict[str, Any]) -> SleepResult:
    """The sleep answer map as a typed value."""
    return SleepResult(slept_ms=int(answer["slept_ms"]), wake_at_ms=int(answer["wake_at_ms"]))


def instance_status(answer: dict[str, Any]) -> InstanceStatus:
    """The get_instance_status answer map as a typed value."""
    return InstanceStatus(
        instance_id=str(answer.get("instance_id", "")),
        status=_status(answer.get("status")),
        checkpoint_id=answer.get("checkpoint_id"),
        started_at_ms=int(answer.get("started_at_ms") or 0),
        finished_at_ms=answer.get("finished_at_ms"),
        sleep_until_ms=answer.get("sleep_until_ms"),
        output=answer.get("output"),
        error=answer.get("error"),
    )


def signals(answer: dict[str, Any]) -> Signals:
    """The poll_signals answer map as a typed value."""
    return Signals(
        signal=_pending_signal(answer.get("signal")),
        custom_signal=_custom_signal(answer.get("custom_signal")),
    )


def ack_result(answer: dict[str, Any]) -> AckResult:
    """The signal_ack answer map as a typed value."""
    return AckResult(success=bool(answer.get("success")), status=_status(answer.get("status")))


def batch_result(answer: dict[str, Any]) -> BatchResult:
    """The instance_event_batch answer map as a typed value."""
    return BatchResult(
        accepted=int(answer.get("accepted") or 0),
        errors=tuple(
            BatchError(int(item["index"]), str(item["kind"]), str(item["message"]))
            for item in answer.get("errors") or ()
        ),
    )


def health(answer: dict[str, Any]) -> Health:
    """The health answer map as a typed value."""
    return Health(
        version=str(answer.get("version", "")),
        protocol=int(answer.get("protocol") or 0),
        uptime_ms=int(answer.get("uptime_ms") or 0),
        database=str(answer.get("database", "")),
    )


def _status(value: object) -> Status:
    try:
        return Status(value)
    except ValueError:
        return Status.UNKNOWN


def _replay_index(value: object) -> ReplayIndex | None:
    if not isinstance(value, dict):
        return None
    retries = value.get("retry_attempts") or {}
    return ReplayIndex(
        checkpoint_ids=frozenset(str(item) for item in value.get("checkpoint_ids") or ()),
        retry_attempts={
            str(checkpoint_id): attempt
            for checkpoint_id, item in retries.items()
            if (attempt := _retry_attempt(item)) is not None
        },
    )


def _retry_attempt(value: object) -> RetryAttempt | None:
    if not isinstance(value, dict):
        return None
    message = value.get("error_message")
    return RetryAttempt(int(value["attempt_number"]), None if message is None else str(message))


def _pending_signal(value: object) -> PendingSignal | None:
    if not isinstance(value, dict):
        return None
    return PendingSignal(SignalType(value["signal_type"]), bytes(value.get("payload") or b""))


def _custom_signal(value: object) -> CustomSignal | None:
    if not isinstance(value, dict):
        return None
    signal_id = value.get("signal_id")
    return CustomSignal(
        str(value["checkpoint_id"]),
        bytes(value.get("payload") or b""),
        None if signal_id is None else int(signal_id),
    )
