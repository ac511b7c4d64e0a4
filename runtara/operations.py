"""The instance protocol's operations (PROTOCOL.md sections 5 and 6).

Each handler validates its fields, asks persistence (one transaction per
operation, committed before the handler returns) and builds the result map.
Handlers raise ``runtara.errors`` for error responses; the dispatcher adds
the operation's error code.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from runtara import __version__
from runtara.errors import (
    PermissionDenied,
    ResourceExhausted,
    RuntaraError,
    Unauthenticated,
    ValidationError,
)
from runtara.fields import (
    MAX_CHECKPOINT_ID_BYTES,
    MAX_INSTANCE_ID_BYTES,
    MAX_RUN_ID_BYTES,
    Fields,
)
from runtara.interfaces import IPersistence
from runtara.model import (
    CLIENT_EVENT_TYPES,
    CustomSignal,
    Event,
    EventType,
    PendingSignal,
    ReplayIndex,
    RetryAttempt,
    SignalType,
    Status,
)
from runtara.session import Admission, Session
from runtara.sleeper import Sleeper

PROTOCOL_VERSION = 1
MAX_BATCH_EVENTS = 1000

Result = dict[str, Any]
Handler = Callable[["OperationContext", Session, Fields], Awaitable[Result]]


class CallAbandoned(Exception):
    """The call can no longer be answered (its connection closed while it waited)."""


@dataclass
class OperationContext:
    """What every handler may use; one per server."""

    persistence: IPersistence
    clock: IReactorTime
    admission: Admission
    sleeper: Sleeper
    auth_tokens: Mapping[str, str]
    started_at: float

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)


@dataclass(frozen=True)
class Operation:
    name: str
    error_code: str
    handler: Handler
    needs_registration: bool = True


_log = Logger(namespace="runtara.operations")


def _signal_map(signal: PendingSignal) -> Result:
    return {"signal_type": signal.signal_type.value, "payload": signal.payload}


def _custom_signal_map(signal: CustomSignal) -> Result:
    return _without_none(
        {
            "checkpoint_id": signal.checkpoint_id,
            "payload": signal.payload,
            "signal_id": signal.signal_id,
        }
    )


def _without_none(result: Result) -> Result:
    return {key: value for key, value in result.items() if value is not None}


# -- 6.1 register_instance ------------------------------------------------


def _check_token(context: OperationContext, tenant_id: str, token: str | None) -> None:
    if not context.auth_tokens:
        return
    expected = context.auth_tokens.get(tenant_id)
    offered = (token or "").encode("utf-8")
    # Compare even when the tenant has no token, so timing tells nothing.
    matches = hmac.compare_digest(offered, (expected or "").encode("utf-8"))
    if expected is None or token is None or not matches:
        raise Unauthenticated(f"Invalid or missing token for tenant '{tenant_id}'")


def _refusal(message: str, status: Status = Status.UNKNOWN) -> Result:
    return {"success": False, "error": message, "status": status.value, "resumed": False}


async def register_instance(context: OperationContext, session: Session, fields: Fields) -> Result:
    instance_id = fields.str("instance_id")
    tenant_id = fields.str("tenant_id")
    checkpoint_id = fields.str("checkpoint_id", required=False)
    run_id = fields.str("run_id", required=False)
    replay_index = fields.bool("replay_index", required=False)
    token = fields.str("token", required=False)
    try:
        _check_token(context, tenant_id, token)
    except Unauthenticated:
        session.close("unauthenticated")
        raise
    for name, value, limit in (
        ("instance_id", instance_id, MAX_INSTANCE_ID_BYTES),
        ("tenant_id", tenant_id, None),
        ("checkpoint_id", checkpoint_id, MAX_CHECKPOINT_ID_BYTES),
        ("run_id", run_id, MAX_RUN_ID_BYTES),
    ):
        if value == "":
            return _refusal(ValidationError(name, "must not be empty").message)
        if value is not None and limit is not None and len(value.encode("utf-8")) > limit:
            return _refusal(ValidationError(name, f"must be at most {limit} bytes").message)
    if session.tenant_id is not None and session.tenant_id != tenant_id:
        return _refusal(
            f"Connection is registered for tenant '{session.tenant_id}'; "
            f"it cannot register instances of tenant '{tenant_id}'"
        )

    newly_counted = not context.admission.is_counted(instance_id)
    if not context.admission.try_admit(instance_id, session):
        raise ResourceExhausted(
            f"Too many concurrent instances: the limit is {context.admission.limit}"
        )
    try:
        registration = await context.persistence.register_instance(
            instance_id, tenant_id, checkpoint_id, run_id, replay_index
        )
    except BaseException:
        if newly_counted:
            context.admission.release(instance_id)
        raise
    if not registration.success:
        if newly_counted:
            context.admission.release(instance_id)
        return _refusal(registration.error, registration.status)
    session.tenant_id = tenant_id
    _log.info(
        "instance {instance_id} of tenant {tenant_id} registered (resumed={resumed})",
        instance_id=instance_id,
        tenant_id=tenant_id,
        resumed=registration.resumed,
    )
    answer: Result = {
        "success": True,
        "error": "",
        "status": registration.status.value,
        "resumed": registration.resumed,
    }
    if registration.replay_index is not None:
        answer["replay_index"] = _replay_index_map(registration.replay_index)
    return answer


def _replay_index_map(index: ReplayIndex) -> Result:
    return {
        "checkpoint_ids": sorted(index.checkpoint_ids),
        "retry_attempts": {
            checkpoint_id: _retry_attempt_map(attempt)
            for checkpoint_id, attempt in sorted(index.retry_attempts.items())
        },
    }


def _retry_attempt_map(attempt: RetryAttempt) -> Result:
    return _without_none(
        {"attempt_number": attempt.attempt_number, "error_message": attempt.error_message}
    )


# -- 6.2 / 6.3 checkpoints --------------------------------------------------


def _received_signal(fields: Fields) -> CustomSignal | None:
    """The ``receive_signal`` map of a checkpoint (docs/protocol.md 8.3), if any."""
    receive = fields.map("receive_signal")
    if receive is None:
        return None
    return CustomSignal(
        checkpoint_id=receive.checkpoint_id(),
        payload=b"",
        signal_id=receive.int("signal_id"),
    )


async def checkpoint(context: OperationContext, session: Session, fields: Fields) -> Result:
    result = await context.persistence.save_checkpoint(
        fields.instance_id(),
        session.tenant_id,
        fields.checkpoint_id(),
        fields.bytes("state"),
        _received_signal(fields),
    )
    answer: Result = {"found": result.found, "state": result.state}
    if result.pending_signal is not None:
        answer["pending_signal"] = _signal_map(result.pending_signal)
    if result.custom_signal is not None:
        answer["custom_signal"] = _custom_signal_map(result.custom_signal)
    return answer


async def get_checkpoint(context: OperationContext, session: Session, fields: Fields) -> Result:
    instance_id = fields.instance_id()
    checkpoint_id = fields.checkpoint_id()
    if not fields.bool("last_attempt", required=False):
        state = await context.persistence.get_checkpoint(
            instance_id, session.tenant_id, checkpoint_id
        )
        return {"found": state is not None, "state": state or b""}
    stored = await context.persistence.replay_checkpoint(
        instance_id, session.tenant_id, checkpoint_id
    )
    answer: Result = {"found": stored.found, "state": stored.state}
    if stored.last_attempt is not None:
        answer["last_attempt"] = _retry_attempt_map(stored.last_attempt)
    return answer


# -- 6.4 sleep --------------------------------------------------------------


async def sleep(context: OperationContext, session: Session, fields: Fields) -> Result:
    instance_id = fields.instance_id()
    duration_ms = fields.int("duration_ms", minimum=0)
    checkpoint_id = fields.checkpoint_id()
    state = fields.bytes("state")
    called_at_ms = context.now_ms()
    plan = await context.persistence.begin_sleep(
        instance_id, session.tenant_id, checkpoint_id, state, duration_ms
    )
    if plan.wake_at_ms is None:
        return {"slept_ms": 0, "wake_at_ms": called_at_ms}
    context.admission.release(instance_id)
    remaining_s = (plan.wake_at_ms - context.now_ms()) / 1000
    try:
        await context.sleeper.wait(session, remaining_s)
    except CancelledError:
        raise CallAbandoned(f"sleep of {instance_id} dropped: its connection closed") from None
    status = await context.persistence.finish_sleep(instance_id, checkpoint_id)
    if status is Status.RUNNING:
        context.admission.readmit(instance_id, session)
    return {"slept_ms": context.now_ms() - called_at_ms, "wake_at_ms": plan.wake_at_ms}


# -- 6.5 / 6.6 events -------------------------------------------------------

_STOPS_COUNTING = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.SUSPENDED})


def _event(fields: Fields) -> tuple[str, Event]:
    instance_id = fields.instance_id()
    event = Event(
        event_type=fields.enum("event_type", EventType, CLIENT_EVENT_TYPES),
        payload=fields.bytes("payload", required=False),
        checkpoint_id=fields.checkpoint_id(required=False),
        timestamp_ms=fields.int("timestamp_ms", required=False),
        subtype=fields.str("subtype", required=False),
    )
    return instance_id, event


async def _record_event(
    context: OperationContext, session: Session, instance_id: str, event: Event
) -> None:
    await context.persistence.record_event(instance_id, session.tenant_id, event)
    if event.event_type in _STOPS_COUNTING:
        context.admission.release(instance_id)


async def instance_event(context: OperationContext, session: Session, fields: Fields) -> Result:
    instance_id, event = _event(fields)
    await _record_event(context, session, instance_id, event)
    return {"success": True}


async def instance_event_batch(
    context: OperationContext, session: Session, fields: Fields
) -> Result:
    events = fields.list("events")
    if len(events) > MAX_BATCH_EVENTS:
        raise ValidationError("events", f"at most {MAX_BATCH_EVENTS} events per batch")
    accepted = 0
    errors = []
    for index, item in enumerate(events):
        try:
            if not isinstance(item, dict):
                raise ValidationError(f"events[{index}]", "expected map")
            instance_id, event = _event(Fields(item))
            await _record_event(context, session, instance_id, event)
        except RuntaraError as error:
            errors.append({"index": index, "kind": error.kind.value, "message": error.message})
        else:
            accepted += 1
    return {"accepted": accepted, "errors": errors}


# -- 6.7 / 6.8 / 6.9 status and signals --------------------------------------


async def get_instance_status(
    context: OperationContext, session: Session, fields: Fields
) -> Result:
    instance_id = fields.instance_id()
    record = await context.persistence.get_instance_status(instance_id, session.tenant_id)
    if record is None:
        return {
            "instance_id": instance_id,
            "status": Status.UNKNOWN.value,
            "started_at_ms": 0,
            "error": "Instance not found",
        }
    return _without_none(
        {
            "instance_id": record.instance_id,
            "status": record.status.value,
            "checkpoint_id": record.checkpoint_id,
            "started_at_ms": record.started_at_ms or 0,
            "finished_at_ms": record.finished_at_ms,
            "sleep_until_ms": record.sleep_until_ms,
            "output": record.output,
            "error": record.error,
        }
    )


async def poll_signals(context: OperationContext, session: Session, fields: Fields) -> Result:
    signals = await context.persistence.poll_signals(
        fields.instance_id(),
        session.tenant_id,
        fields.checkpoint_id(required=False),
        fields.bool("peek", required=False),
    )
    answer: Result = {}
    if signals.signal is not None:
        answer["signal"] = _signal_map(signals.signal)
    if signals.custom_signal is not None:
        answer["custom_signal"] = _custom_signal_map(signals.custom_signal)
    return answer


async def signal_ack(context: OperationContext, session: Session, fields: Fields) -> Result:
    instance_id = fields.instance_id()
    signal_type = fields.enum("signal_type", SignalType)
    acknowledged = fields.bool("acknowledged")
    idempotent = fields.bool("idempotent", required=False)
    result = await context.persistence.acknowledge_signal(
        instance_id, session.tenant_id, signal_type, acknowledged, idempotent
    )
    if result.success and result.status is not Status.RUNNING:
        context.admission.release(instance_id)
    return {"success": result.success, "status": result.status.value}


# -- 6.10 / 6.11 --------------------------------------------------------------


async def retry_attempt(context: OperationContext, session: Session, fields: Fields) -> Result:
    await context.persistence.record_retry_attempt(
        fields.instance_id(),
        session.tenant_id,
        fields.checkpoint_id(),
        fields.int("attempt_number", minimum=1),
        fields.int("timestamp_ms", required=False),
        fields.str("error_message", required=False),
    )
    return {"success": True}


async def health(context: OperationContext, session: Session, fields: Fields) -> Result:
    database_ok = await context.persistence.check_health()
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "uptime_ms": int((context.clock.seconds() - context.started_at) * 1000),
        "database": "ok" if database_ok else "unavailable",
    }


OPERATIONS: dict[str, Operation] = {
    operation.name: operation
    for operation in (
        Operation("register_instance", "REGISTER_INSTANCE_ERROR", register_instance, False),
        Operation("checkpoint", "CHECKPOINT_ERROR", checkpoint),
        Operation("get_checkpoint", "GET_CHECKPOINT_ERROR", get_checkpoint),
        Operation("sleep", "SLEEP_ERROR", sleep),
        Operation("instance_event", "INSTANCE_EVENT_ERROR", instance_event),
        Operation("instance_event_batch", "INSTANCE_EVENT_ERROR", instance_event_batch),
        Operation("get_instance_status", "GET_INSTANCE_STATUS_ERROR", get_instance_status),
        Operation("poll_signals", "POLL_SIGNALS_ERROR", poll_signals),
        Operation("signal_ack", "SIGNAL_ACK_ERROR", signal_ack),
        Operation("retry_attempt", "RETRY_ATTEMPT_ERROR", retry_attempt),
        Operation("health", "HEALTH_ERROR", health, False),
    )
}


def refuse_anonymous(operation: Operation) -> None:
    raise PermissionDenied(
        f"Operation '{operation.name}' needs a registered connection: call register_instance first"
    )
