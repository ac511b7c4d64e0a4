"""``InstanceClient``: every protocol operation for one instance, as a method.

::

    client = await InstanceClient.connect(reactor)          # config from the environment
    saved = await client.checkpoint("step-1", b"state")      # CheckpointResult
    await client.instance_event(EventType.COMPLETED, b"output")
    await client.close()

Each method fires with a typed answer (``runtara.sdk.results`` and
``runtara.model``) or fails with ``RemoteError``, ``RegistrationRefused``,
``ServerUnreachable`` or ``SessionClosed``. Connection loss, server restarts
and retryable errors are handled underneath (``InstanceSession``); heartbeats
run in the background once ``start_heartbeats`` is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from runtara.model import (
    AckResult,
    CheckpointResult,
    CustomSignal,
    Event,
    EventType,
    Registration,
    RetryAttempt,
    Signals,
    SignalType,
)
from runtara.sdk import results
from runtara.sdk.config import SdkConfig, config_from_env
from runtara.sdk.connection import InstanceSession, connect_link
from runtara.sdk.heartbeat import Heartbeat
from runtara.sdk.results import BatchResult, Health, InstanceStatus, SleepResult

__all__ = ["InstanceClient", "now_ms"]


def now_ms(clock: IReactorTime) -> int:
    """``clock``'s time in epoch milliseconds (the protocol's time unit)."""
    return int(clock.seconds() * 1000)


class InstanceClient:
    """The protocol operations (PROTOCOL.md section 6) of one registered instance.

    Build it with ``InstanceClient.connect``; the constructor takes an
    ``InstanceSession`` (a test can give it one over fake links).
    """

    def __init__(self, clock: IReactorTime, config: SdkConfig, session: InstanceSession) -> None:
        self._clock = clock
        self._config = config
        self._session = session
        self._heartbeat: Heartbeat | None = None
        self._saved: set[str] = set()
        self._failed: dict[str, RetryAttempt] = {}

    @classmethod
    async def connect(cls, reactor: Any, config: SdkConfig | None = None) -> InstanceClient:
        """Connect to the server, register the instance, and return the client.

        ``config`` defaults to ``config_from_env()``. Connection failures are
        retried as ``SdkConfig.reconnect_backoff`` and ``give_up_after`` say.
        """
        config = config if config is not None else config_from_env()
        session = InstanceSession(reactor, config, lambda: connect_link(reactor, config))
        client = cls(reactor, config, session)
        try:
            await session.open()
        except BaseException:
            # Refused or unreachable: release the connection and its UDP port.
            await client.close()
            raise
        return client

    @property
    def config(self) -> SdkConfig:
        return self._config

    @property
    def instance_id(self) -> str:
        return self._config.instance_id

    @property
    def tenant_id(self) -> str:
        return self._config.tenant_id

    @property
    def registration(self) -> Registration | None:
        """The answer to the latest (re-)registration."""
        return self._session.registration

    @property
    def session(self) -> InstanceSession:
        return self._session

    # -- what is known without asking (docs/protocol.md 8.4) ----------------------

    def is_new_checkpoint(self, checkpoint_id: str) -> bool:
        """True when the instance certainly has no checkpoint ``checkpoint_id``.

        That is when the latest registration's replay index does not list it
        and this client did not save it since. False when it is not known
        (no replay index): ask the server. A checkpoint another run saves
        meanwhile is still caught by ``checkpoint`` (save-or-return).
        """
        registration = self._session.registration
        index = None if registration is None else registration.replay_index
        return (
            index is not None
            and checkpoint_id not in index.checkpoint_ids
            and checkpoint_id not in self._saved
        )

    def last_attempt(self, checkpoint_id: str) -> RetryAttempt | None:
        """The last failed attempt of ``checkpoint_id`` known without asking: from the
        replay index, or recorded by this client since."""
        registration = self._session.registration
        index = None if registration is None else registration.replay_index
        known = [self._failed.get(checkpoint_id)]
        if index is not None:
            known.append(index.retry_attempts.get(checkpoint_id))
        attempts = [attempt for attempt in known if attempt is not None]
        return max(attempts, key=lambda attempt: attempt.attempt_number, default=None)

    # -- the operations ------------------------------------------------------

    async def register_instance(self, checkpoint_id: str | None = None) -> Registration:
        """Register the instance again (PROTOCOL.md 6.1); the answer, refusals included.

        The client registers by itself on every (re)connection; call this
        only to register from a given ``checkpoint_id``.
        """
        fields = self._fields(tenant_id=self.tenant_id, checkpoint_id=checkpoint_id)
        if self._config.auth_token is not None:
            fields["token"] = self._config.auth_token
        return results.registration(await self._call("register_instance", fields))

    async def checkpoint(
        self, checkpoint_id: str, state: bytes, *, received: CustomSignal | None = None
    ) -> CheckpointResult:
        """Save-or-return ``state`` under ``checkpoint_id`` (PROTOCOL.md 6.2).

        ``found`` is True when a state was stored earlier; ``state`` is then
        that stored state. Also carries the pending instance-wide signal and
        the custom signal addressed to ``checkpoint_id`` (consumed).

        ``received`` is a custom signal peeked at (``poll_signals(...,
        peek=True)``) whose payload ``state`` holds: storing the state
        consumes that signal in the same transaction (docs/protocol.md 8.3).
        """
        fields = self._fields(checkpoint_id=checkpoint_id, state=state)
        if received is not None and received.signal_id is not None:
            fields["receive_signal"] = {
                "checkpoint_id": received.checkpoint_id,
                "signal_id": received.signal_id,
            }
        saved = results.checkpoint_result(await self._call("checkpoint", fields))
        self._saved.add(checkpoint_id)
        return saved

    async def get_checkpoint(
        self, checkpoint_id: str, *, last_attempt: bool = False
    ) -> CheckpointResult:
        """Read a stored checkpoint without writing anything (PROTOCOL.md 6.3).

        With ``last_attempt`` the answer also carries the last failed attempt
        recorded for ``checkpoint_id`` (docs/protocol.md 8.4).
        """
        fields = self._fields(checkpoint_id=checkpoint_id, last_attempt=last_attempt or None)
        return results.checkpoint_result(await self._call("get_checkpoint", fields))

    async def sleep(self, duration_ms: int, checkpoint_id: str, state: bytes = b"") -> SleepResult:
        """Sleep durably (PROTOCOL.md 6.4); fires when the sleep has ended.

        Replaying a finished sleep answers at once; after a lost connection
        or a restart the same ``checkpoint_id`` sleeps only what remains.
        """
        fields = self._fields(duration_ms=duration_ms, checkpoint_id=checkpoint_id, state=state)
        timeout = duration_ms / 1000 + self._config.request_timeout
        return results.sleep_result(await self._call("sleep", fields, timeout=timeout))

    async def instance_event(
        self,
        event_type: EventType | str,
        payload: bytes = b"",
        *,
        checkpoint_id: str | None = None,
        subtype: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Record an event (PROTOCOL.md 6.5): ``heartbeat``, ``custom``, or a status change
        (``completed`` with the output, ``failed`` with the error text, ``suspended``)."""
        event = Event(EventType(event_type), payload, checkpoint_id, timestamp_ms, subtype)
        await self._call("instance_event", self._event_fields(event))

    async def instance_event_batch(self, events: Sequence[Event]) -> BatchResult:
        """Record up to 1000 events, each in its own transaction (PROTOCOL.md 6.6)."""
        fields = {"events": [self._event_fields(event) for event in events]}
        return results.batch_result(await self._call("instance_event_batch", fields))

    async def get_instance_status(self, instance_id: str | None = None) -> InstanceStatus:
        """The status of this instance, or of another one of the same tenant (6.7)."""
        fields = {"instance_id": instance_id or self.instance_id}
        return results.instance_status(await self._call("get_instance_status", fields))

    async def poll_signals(
        self, checkpoint_id: str | None = None, *, peek: bool = False
    ) -> Signals:
        """The pending instance-wide signal (not consumed) and, with ``checkpoint_id``,
        the custom signal addressed to it (PROTOCOL.md 6.8): consumed, or with ``peek``
        left pending and reported with its ``signal_id`` (docs/protocol.md 8.3)."""
        fields = self._fields(checkpoint_id=checkpoint_id, peek=peek or None)
        return results.signals(await self._call("poll_signals", fields))

    async def signal_ack(
        self, signal_type: SignalType | str, acknowledged: bool = True
    ) -> AckResult:
        """Acknowledge the pending signal of ``signal_type`` (PROTOCOL.md 6.9).

        ``cancel`` makes the instance ``cancelled``, ``pause`` ``suspended``.
        Sent ``idempotent`` (docs/protocol.md 8.2): acknowledging again the
        signal that was acknowledged last succeeds again and applies its
        status change again, so a retry after a lost answer has the effect
        of one acknowledgement.
        """
        fields = self._fields(
            signal_type=SignalType(signal_type).value,
            acknowledged=acknowledged,
            idempotent=True,
        )
        return results.ack_result(await self._call("signal_ack", fields))

    async def retry_attempt(
        self,
        checkpoint_id: str,
        attempt_number: int,
        error_message: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Record a (failed) attempt of the step ``checkpoint_id`` (PROTOCOL.md 6.10)."""
        fields = self._fields(
            checkpoint_id=checkpoint_id,
            attempt_number=attempt_number,
            timestamp_ms=timestamp_ms if timestamp_ms is not None else now_ms(self._clock),
            error_message=error_message,
        )
        await self._call("retry_attempt", fields)
        known = self._failed.get(checkpoint_id)
        if known is None or known.attempt_number < attempt_number:
            self._failed[checkpoint_id] = RetryAttempt(attempt_number, error_message)

    async def health(self) -> Health:
        """The server's version, protocol, uptime and database state (PROTOCOL.md 6.11)."""
        return results.health(await self._call("health", {}))

    # -- heartbeats and shutdown ---------------------------------------------

    def start_heartbeats(self) -> None:
        """Send ``heartbeat`` events every ``heartbeat_interval`` seconds (unless 0)."""
        if self._config.heartbeat_interval <= 0 or self._heartbeat is not None:
            return
        self._heartbeat = Heartbeat(
            self._clock, self._config.heartbeat_interval, self._send_heartbeat
        )
        self._heartbeat.start()

    def stop_heartbeats(self) -> None:
        """Stop the background heartbeats."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    async def close(self) -> None:
        """Stop heartbeats and close the connection (it ends about 90 ms later)."""
        self.stop_heartbeats()
        await self._session.close()

    # -- helpers ---------------------------------------------------------------

    async def _send_heartbeat(self) -> None:
        await self.instance_event(EventType.HEARTBEAT)

    async def _call(
        self, operation: str, fields: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        return await self._session.call(operation, fields, timeout=timeout)

    def _fields(self, **fields: Any) -> dict[str, Any]:
        """This instance's id plus ``fields``, without the ones that are None."""
        present = {name: value for name, value in fields.items() if value is not None}
        return {"instance_id": self.instance_id, **present}

    def _event_fields(self, event: Event) -> dict[str, Any]:
        return self._fields(
            event_type=event.event_type.value,
            payload=event.payload,
            checkpoint_id=event.checkpoint_id,
            subtype=event.subtype,
            timestamp_ms=(
                event.timestamp_ms if event.timestamp_ms is not None else now_ms(self._clock)
            ),
        )
