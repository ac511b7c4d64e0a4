"""The domain values that cross the persistence seam.

Everything here is a frozen value: persistence providers build them from
rows, the protocol layer turns them into wire maps. Times are integer epoch
milliseconds (PROTOCOL.md: "Times on the wire are integers").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    """An instance's lifecycle status (PROTOCOL.md section 8)."""

    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class SignalType(enum.StrEnum):
    """An instance-wide signal sent from outside (PROTOCOL.md section 7)."""

    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"


class EventType(enum.StrEnum):
    """Event types: the first five come from clients, the rest from the server."""

    HEARTBEAT = "heartbeat"
    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"
    CUSTOM = "custom"
    STARTED = "started"
    SLEEP = "sleep"
    WAKE = "wake"


CLIENT_EVENT_TYPES = frozenset(
    {
        EventType.HEARTBEAT,
        EventType.COMPLETED,
        EventType.FAILED,
        EventType.SUSPENDED,
        EventType.CUSTOM,
    }
)


@dataclass(frozen=True)
class PendingSignal:
    """The instance's unacknowledged cancel/pause/resume signal."""

    signal_type: SignalType
    payload: bytes


@dataclass(frozen=True)
class CustomSignal:
    """A custom signal addressed to one checkpoint of an instance.

    ``signal_id`` is set when the signal was peeked at (reported without
    being consumed): it names this payload, so that a checkpoint can consume
    exactly it (docs/protocol.md 8.3). A newer send gets a higher id.
    """

    checkpoint_id: str
    payload: bytes
    signal_id: int | None = None


@dataclass(frozen=True)
class RetryAttempt:
    """A failed attempt of a step, as recorded by retry_attempt (PROTOCOL.md 6.10)."""

    attempt_number: int
    error_message: str | None = None


@dataclass(frozen=True)
class ReplayIndex:
    """What a resumed workflow needs before it replays (docs/protocol.md 8.4).

    ``checkpoint_ids``: every checkpoint the instance has. ``retry_attempts``:
    for each checkpoint id with failed attempts recorded and no checkpoint
    stored, its last failed attempt.
    """

    checkpoint_ids: frozenset[str]
    retry_attempts: dict[str, RetryAttempt] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Registration:
    """The answer to register_instance (PROTOCOL.md 6.1).

    Refusals about the instance are in-band: ``success`` is false and
    ``error`` says why. ``replay_index`` is given when it was asked for and
    the registration succeeded (docs/protocol.md 8.4).
    """

    success: bool
    status: Status
    resumed: bool = False
    error: str = ""
    replay_index: ReplayIndex | None = None


@dataclass(frozen=True)
class CheckpointResult:
    """The answer to a save-or-return checkpoint (PROTOCOL.md 6.2) or a read (6.3).

    ``last_attempt`` is the last failed attempt recorded for the checkpoint
    id, when a read asked for it (docs/protocol.md 8.4).
    """

    found: bool
    state: bytes
    pending_signal: PendingSignal | None = None
    custom_signal: CustomSignal | None = None
    last_attempt: RetryAttempt | None = None


@dataclass(frozen=True)
class SleepPlan:
    """What a sleep call must do once its transaction committed (PROTOCOL.md 6.4).

    ``wake_at_ms`` is None when this sleep already ended in an earlier run:
    the call answers at once with ``slept_ms: 0``.
    """

    wake_at_ms: int | None


@dataclass(frozen=True)
class Signals:
    """The answer to poll_signals (PROTOCOL.md 6.8)."""

    signal: PendingSignal | None = None
    custom_signal: CustomSignal | None = None


@dataclass(frozen=True)
class AckResult:
    """The answer to signal_ack (PROTOCOL.md 6.9)."""

    success: bool
    status: Status


@dataclass(frozen=True)
class Event:
    """An event as a client reports it (PROTOCOL.md 6.5)."""

    event_type: EventType
    payload: bytes = b""
    checkpoint_id: str | None = None
    timestamp_ms: int | None = None
    subtype: str | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """Every stored field of one instance."""

    instance_id: str
    tenant_id: str
    status: Status
    checkpoint_id: str | None
    created_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None
    sleep_until_ms: int | None
    output: bytes | None
    error: str | None


@dataclass(frozen=True)
class CheckpointInfo:
    """One stored checkpoint, without its state (for listings)."""

    checkpoint_id: str
    size_bytes: int
    created_at_ms: int


@dataclass(frozen=True)
class EventRecord:
    """One stored event row."""

    event_id: int
    instance_id: str
    event_type: EventType
    subtype: str | None
    checkpoint_id: str | None
    payload: bytes
    client_ts_ms: int | None
    created_at_ms: int


@dataclass(frozen=True)
class InstanceDetails:
    """One instance with what an operator wants to see next to it."""

    instance: InstanceRecord
    pending_signal: PendingSignal | None
    checkpoint_count: int
    event_count: int
