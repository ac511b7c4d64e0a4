"""``Workflow``: the durable building blocks a workflow function is written with.

::

    async def process(workflow: Workflow) -> dict:
        order = await workflow.step("validate", validate_order, order_id)
        await workflow.sleep(30, "cool-down")
        approval = await workflow.wait_for_signal("approval", timeout=3600)
        return await workflow.step("ship", ship, order, approval)

Every building block is keyed by a name that is unique within the
workflow, and is replay-safe: run the same function again for the same
instance (after a crash, a restart or a pause) and finished steps return
their checkpointed result without running, a finished sleep does not sleep
again, a received signal is returned again.

Checkpoint ids used: a step or a sleep uses its name; ``wait_for_signal``
waits for the custom signal addressed to its name and stores what it
received under ``<name>#signal`` and its deadline under ``<name>#deadline``.

Round trips: the registration answers the instance's replay index (every
checkpoint id, and the failed attempts of unfinished steps), so a step the
instance never finished is one ``checkpoint`` call, a finished one replayed
is one ``get_checkpoint``; a step's attempts continue their count across
restarts, so its retry policy's limit holds.

Cancel and pause signals are observed on every checkpoint answer, on every
poll while waiting for a signal, after every sleep, and by
``check_signals``. Cancel is acknowledged (the instance becomes
``cancelled``) and raises ``WorkflowCancelled``; pause is acknowledged, the
instance reported ``suspended``, and ``WorkflowPaused`` raised so the
workflow exits cleanly and can be resumed by running it again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn

import msgpack
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from runtara.model import (
    CheckpointResult,
    CustomSignal,
    EventType,
    PendingSignal,
    RetryAttempt,
    SignalType,
    Status,
)
from runtara.sdk.client import InstanceClient, now_ms
from runtara.sdk.errors import (
    RegistrationRefused,
    RetriesExhausted,
    SignalTimeout,
    WorkflowCancelled,
    WorkflowInterrupted,
    WorkflowPaused,
)
from runtara.sdk.results import SleepResult
from runtara.sdk.retry import RetryPolicy
from runtara.sdk.serializers import MsgpackSerializer, Serializer

__all__ = [
    "DEADLINE_SUFFIX",
    "SIGNAL_SUFFIX",
    "Workflow",
    "describe_error",
]

SIGNAL_SUFFIX = "#signal"
"""Appended to a signal's name: the checkpoint that keeps the received payload."""
DEADLINE_SUFFIX = "#deadline"
"""Appended to a signal's name: the checkpoint that keeps the wait's deadline."""

Duration = float | int | timedelta
"""Seconds, or a ``timedelta``."""


class Workflow:
    """Durable steps, sleeps and signal waits for one instance.

    ``serializer`` (msgpack by default) encodes step results and the
    workflow's output; ``retry_policy`` is the default of every step;
    ``signal_poll_interval`` is how often ``wait_for_signal`` asks the server.
    """

    _log = Logger()

    def __init__(
        self,
        client: InstanceClient,
        clock: IReactorTime,
        *,
        serializer: Serializer | None = None,
        retry_policy: RetryPolicy | None = None,
        signal_poll_interval: float = 1.0,
    ) -> None:
        if signal_poll_interval <= 0:
            raise ValueError(f"signal_poll_interval must be > 0, not {signal_poll_interval!r}")
        self._client = client
        self._clock = clock
        self.serializer: Serializer = serializer or MsgpackSerializer()
        self.retry_policy: RetryPolicy = retry_policy or RetryPolicy()
        self.signal_poll_interval = signal_poll_interval
        self.interrupted: WorkflowInterrupted | None = None
        """The cancel or pause that stopped this workflow, once one did."""
        self._names: set[str] = set()

    @property
    def instance_id(self) -> str:
        return self._client.instance_id

    @property
    def client(self) -> InstanceClient:
        """The client underneath, for the protocol's other operations."""
        return self._client

    # -- steps -------------------------------------------------------------------

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        serializer: Serializer | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once for the life of the instance; its result.

        On replay the checkpointed result is returned and ``fn`` does not
        run. Otherwise ``fn`` runs (it may return a value, a Deferred or a
        coroutine), is retried as ``retry`` (default: the workflow's policy)
        says, each failed attempt recorded with ``retry_attempt``, and its
        result is checkpointed (save-or-return: if another run saved this
        step first, that run's result is returned instead). The value
        returned is always the decoded checkpoint, on the first run too.
        ``fn``'s own keyword arguments named ``retry`` or ``serializer``
        must be bound with ``functools.partial``.
        """
        self._claim(name)
        serializer = serializer or self.serializer
        stored = await self._replay(name)
        if stored.found:
            self._log.debug(
                "step {name} of {instance_id} replayed from its checkpoint",
                name=name,
                instance_id=self.instance_id,
            )
            return serializer.decode(stored.state)
        policy = retry or self.retry_policy
        value = await self._attempts(name, fn, args, kwargs, policy, stored.last_attempt)
        encoded = serializer.encode(value)
        saved = await self._client.checkpoint(name, encoded)
        if saved.found:
            self._log.warn(
                "step {name} of {instance_id} was saved by another run first; using its result",
                name=name,
                instance_id=self.instance_id,
            )
        self._ignore_custom_signal(saved, name)
        result = serializer.decode(saved.state if saved.found else encoded)
        await self._observe(saved.pending_signal)
        return result

    async def _attempts(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: RetryPolicy,
        previous: RetryAttempt | None,
    ) -> Any:
        attempt = 1
        if previous is not None:
            # Earlier runs failed attempts of this step: the policy's limit counts them.
            if previous.attempt_number >= policy.max_attempts:
                raise RetriesExhausted(
                    name, previous.attempt_number, policy.max_attempts, previous.error_message
                )
            attempt = previous.attempt_number + 1
            self._log.info(
                "step {name} of {instance_id} continues with attempt {attempt}",
                name=name,
                instance_id=self.instance_id,
                attempt=attempt,
            )
        while True:
            try:
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                return value
            except Exception as error:
                await self._client.retry_attempt(name, attempt, describe_error(error))
                if not policy.should_retry(attempt, error):
                    raise
                delay = policy.delay(attempt)
                self._log.warn(
                    "step {name} of {instance_id} failed on attempt {attempt} ({error});"
                    " retrying in {delay:.2f} s",
                    name=name,
                    instance_id=self.instance_id,
                    attempt=attempt,
                    error=describe_error(error),
                    delay=delay,
                )
                await deferLater(self._clock, delay)
                attempt += 1

    async def _replay(self, checkpoint_id: str) -> CheckpointResult:
        """What is stored for ``checkpoint_id`` (with its last failed attempt).

        The latest registration's replay index lists every checkpoint the
        instance had: one it does not list (and the client did not save
        since) is new, and nothing is asked. Otherwise, or without an index
        (an older server, or too many checkpoints), one ``get_checkpoint``
        asks.
        """
        if self._client.is_new_checkpoint(checkpoint_id):
            return CheckpointResult(
                found=False, state=b"", last_attempt=self._client.last_attempt(checkpoint_id)
            )
        return await self._client.get_checkpoint(checkpoint_id, last_attempt=True)

    # -- sleeping ----------------------------------------------------------------

    async def sleep(self, duration: Duration, name: str) -> SleepResult:
        """Sleep durably for ``duration`` (PROTOCOL.md 6.4).

        A replay of a finished sleep returns at once (``slept_ms`` 0); a
        sleep interrupted by a crash or a restart wakes at its original time.
        """
        self._claim(name)
        result = await self._client.sleep(_milliseconds(duration), name)
        await self.check_signals()
        return result

    # -- signals -------------------------------------------------------------------

    async def wait_for_signal(self, name: str, timeout: Duration | None = None) -> bytes:
        """Wait for the custom signal addressed to ``name``; its payload.

        The wait peeks at the signal without consuming it; the checkpoint
        that stores the payload (``<name>#signal``) consumes it in the same
        transaction, so the payload is delivered exactly once whatever fails
        in between, and a replay returns the same payload. With ``timeout``,
        the deadline is checkpointed on the first wait (``<name>#deadline``)
        and survives restarts; when it passes, ``SignalTimeout`` is raised,
        and raised again on every replay. A signal sent before the workflow
        reaches the wait is waiting for it.
        """
        self._claim(name)
        received_id = name + SIGNAL_SUFFIX
        stored = await self._replay(received_id)
        if stored.found:
            return _received(name, stored.state)
        deadline_ms = None
        if timeout is not None:
            deadline_ms = await self._deadline(name, now_ms(self._clock) + _milliseconds(timeout))
        envelope, signal = await self._poll_for_signal(name, deadline_ms)
        encoded = msgpack.packb(envelope, use_bin_type=True)
        # Storing what was received consumes the signal in the same transaction.
        saved = await self._client.checkpoint(received_id, encoded, received=signal)
        await self._observe(saved.pending_signal)
        return _received(name, saved.state if saved.found else encoded)

    async def _deadline(self, name: str, proposed_ms: int) -> int:
        saved = await self._client.checkpoint(
            name + DEADLINE_SUFFIX, msgpack.packb(proposed_ms, use_bin_type=True)
        )
        self._ignore_custom_signal(saved, name + DEADLINE_SUFFIX)
        await self._observe(saved.pending_signal)
        return int(msgpack.unpackb(saved.state)) if saved.found else proposed_ms

    async def _poll_for_signal(
        self, name: str, deadline_ms: int | None
    ) -> tuple[dict[str, Any], CustomSignal | None]:
        """What the wait received (its envelope), and the signal peeked at, if any."""
        self._log.info(
            "instance {instance_id} waiting for signal {name}",
            instance_id=self.instance_id,
            name=name,
        )
        while True:
            polled = await self._client.poll_signals(name, peek=True)
            if polled.custom_signal is not None:
                return {"payload": polled.custom_signal.payload}, polled.custom_signal
            await self._observe(polled.signal)
            now = now_ms(self._clock)
            wait = self.signal_poll_interval
            if deadline_ms is not None:
                if now >= deadline_ms:
                    return {"timed_out": deadline_ms}, None
                wait = min(wait, (deadline_ms - now) / 1000)
            await deferLater(self._clock, wait)

    async def check_signals(self) -> None:
        """Ask the server for a pending cancel/pause now, and act on it.

        Long computations between durable calls can call this to react to
        an operator sooner.
        """
        self._raise_if_interrupted()
        polled = await self._client.poll_signals()
        await self._observe(polled.signal)

    async def _observe(self, signal: PendingSignal | None) -> None:
        if signal is None:
            return
        if signal.signal_type is SignalType.CANCEL:
            await self._cancel(signal)
        elif signal.signal_type is SignalType.PAUSE:
            await self._pause(signal)
        else:
            # A resume is only meaningful to a suspended instance; this one runs.
            await self._client.signal_ack(SignalType.RESUME)

    async def _cancel(self, signal: PendingSignal) -> None:
        try:
            ack = await self._client.signal_ack(SignalType.CANCEL)
        except RegistrationRefused as refusal:
            # The acknowledgement landed but its answer was lost with the connection.
            if refusal.status is not Status.CANCELLED:
                raise
        else:
            if ack.status is not Status.CANCELLED:
                await self._signal_replaced(signal)
                return
        self._log.info("instance {instance_id} cancelled", instance_id=self.instance_id)
        self._interrupt(WorkflowCancelled(self.instance_id, signal.payload))

    async def _pause(self, signal: PendingSignal) -> None:
        ack = await self._client.signal_ack(SignalType.PAUSE)
        if not ack.success and ack.status is not Status.SUSPENDED:
            await self._signal_replaced(signal)
            return
        await self._client.instance_event(EventType.SUSPENDED)
        self._log.info("instance {instance_id} paused", instance_id=self.instance_id)
        self._interrupt(WorkflowPaused(self.instance_id, signal.payload))

    async def _signal_replaced(self, signal: PendingSignal) -> None:
        self._log.info(
            "{signal_type} signal of {instance_id} was replaced before it was acknowledged",
            signal_type=signal.signal_type.value,
            instance_id=self.instance_id,
        )
        await self.check_signals()

    # -- helpers -----------------------------------------------------------------

    def _claim(self, name: str) -> None:
        self._raise_if_interrupted()
        if not name:
            raise ValueError("a step, sleep or signal name must not be empty")
        if name in self._names:
            raise ValueError(f"the name {name!r} is already used by this workflow")
        self._names.add(name)

    def _raise_if_interrupted(self) -> None:
        if self.interrupted is not None:
            raise self.interrupted

    def _interrupt(self, interruption: WorkflowInterrupted) -> NoReturn:
        self.interrupted = interruption
        raise interruption

    def _ignore_custom_signal(self, saved: CheckpointResult, checkpoint_id: str) -> None:
        if saved.custom_signal is not None:
            self._log.warn(
                "custom signal for checkpoint {checkpoint_id} of {instance_id} dropped:"
                " it is not a signal name this workflow waits for",
                checkpoint_id=checkpoint_id,
                instance_id=self.instance_id,
            )


def describe_error(error: BaseException) -> str:
    """``Type: message`` (or just ``Type`` without a message): how failures are reported."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _milliseconds(duration: Duration) -> int:
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, got {duration!r}")
    return round(seconds * 1000)


def _received(name: str, state: bytes) -> bytes:
    """The payload a checkpointed wait received, or ``SignalTimeout`` if it timed out."""
    envelope = msgpack.unpackb(state, raw=False)
    if "timed_out" in envelope:
        raise SignalTimeout(name, int(envelope["timed_out"]))
    return bytes(envelope["payload"])
