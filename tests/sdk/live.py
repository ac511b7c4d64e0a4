"""One registered instance on a real runtara-core in this process, seen from
both sides: the workflow's ``InstanceClient`` (QUIC on 127.0.0.1), and the
database the server keeps, which the test reads and writes as an operator
(or another run of the same instance) would.

The workflow's own time is a ``task.Clock`` the test drives: the waits
between signal polls and between step attempts, signal deadlines,
heartbeats and event timestamps. The network and the server's time are
real, so a durable sleep sleeps for real (keep it short), and after moving
the clock a test waits with ``settled`` for the workflow to be back waiting
on it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from runtara.config import config_from_env
from runtara.interfaces import IPersistence
from runtara.model import EventType, SignalType, Status
from runtara.runtime import RunningCore, start_core
from runtara.sdk import InstanceClient, SdkConfig, Workflow
from runtara.sdk.connection import InstanceSession, Link, connect_link
from tests.sdk.support import poll_until, unique

TENANT = "sdk-unit"
START_SECONDS = 1_700_000_000
"""Where the workflow's clock starts (epoch seconds)."""

_DETAIL = {
    "checkpoint": "checkpoint_id",
    "get_checkpoint": "checkpoint_id",
    "sleep": "checkpoint_id",
    "poll_signals": "checkpoint_id",
    "instance_event": "event_type",
    "signal_ack": "signal_type",
    "retry_attempt": "checkpoint_id",
}
"""The field that tells one call of an operation from another in ``calls``."""

_REPORTED = frozenset(
    {EventType.COMPLETED, EventType.FAILED, EventType.SUSPENDED, EventType.CUSTOM}
)
"""The events a workflow reports itself (the server writes ``started``, ``sleep``...)."""


async def start_local_core(state_dir: Any) -> RunningCore:
    """runtara-core on 127.0.0.1, any free port, its SQLite database in ``state_dir``."""
    from twisted.internet import reactor

    config = config_from_env(
        {}, state_dir=state_dir, quic_host="127.0.0.1", quic_port=0, http_port="off"
    )
    return await start_core(config, reactor)


class _RecordingLink:
    """A connection that writes down every call before it goes out."""

    def __init__(self, link: Link, sent: list[tuple[str, dict[str, Any]]]) -> None:
        self._link = link
        self._sent = sent

    def call(self, operation: str, fields: dict[str, Any]) -> Any:
        self._sent.append((operation, dict(fields)))
        return self._link.call(operation, fields)

    def close(self) -> Any:
        return self._link.close()

    def when_closed(self) -> Any:
        return self._link.when_closed()


async def _registered_client(
    client_class: type[InstanceClient],
    clock: Clock,
    config: SdkConfig,
    sent: list[tuple[str, dict[str, Any]]],
) -> InstanceClient:
    """A client of ``client_class`` registered on a connection of its own that writes
    its calls (registration excluded) into ``sent``."""
    from twisted.internet import reactor

    async def connect() -> Link:
        return _RecordingLink(await connect_link(reactor, config), sent)

    session = InstanceSession(reactor, config, connect)
    client = client_class(clock, config, session)
    await session.open()
    sent.clear()
    return client


class LiveInstance:
    """A fresh instance, registered by ``client`` (an ``InstanceClient``, or a
    subclass of it) on ``core``; ``clock`` is the workflow's time."""

    def __init__(self, core: RunningCore, client: InstanceClient, clock: Clock) -> None:
        self.core = core
        self.client = client
        self.clock = clock
        self.sent: list[tuple[str, dict[str, Any]]] = []
        """Every call the client made, ``(operation, fields)``, registration excluded."""

    @classmethod
    async def register(
        cls,
        core: RunningCore,
        client_class: type[InstanceClient] = InstanceClient,
        heartbeat_interval: float = 0,
    ) -> LiveInstance:
        config = SdkConfig(
            instance_id=unique("live"),
            tenant_id=TENANT,
            server_port=core.port,
            ca_file=str(core.certificate_path),
            heartbeat_interval=heartbeat_interval,
            give_up_after=10.0,
        )
        clock = Clock()
        clock.advance(START_SECONDS)
        sent: list[tuple[str, dict[str, Any]]] = []
        client = await _registered_client(client_class, clock, config, sent)
        instance = cls(core, client, clock)
        instance.sent = sent
        return instance

    async def new_run(self) -> None:
        """The workflow process dies and a new one registers the instance: a new client,
        whose registration answers what the earlier runs left (its replay index)."""
        previous = self.client
        self.client = await _registered_client(
            type(previous), self.clock, previous.config, self.sent
        )
        await previous.close()

    @property
    def instance_id(self) -> str:
        return self.client.instance_id

    @property
    def persistence(self) -> IPersistence:
        """The server's database, as operators' tools reach it."""
        return self.core.service.database.persistence

    def workflow(self, **options: Any) -> Workflow:
        """A new run of a workflow for this instance (``Workflow``'s options)."""
        options.setdefault("signal_poll_interval", 1.0)
        return Workflow(self.client, self.clock, **options)

    @property
    def calls(self) -> list[str]:
        """The calls made, as ``"operation detail"`` (``"get_checkpoint step-1"``)."""
        return [
            f"{operation} {fields.get(_DETAIL.get(operation, ''))}"
            for operation, fields in self.sent
        ]

    async def settled(self, work: Deferred[Any]) -> None:
        """Wait until ``work`` has fired or the workflow waits on its clock."""
        await poll_until(
            lambda: work.called or self.clock.getDelayedCalls(),
            "the workflow to wait on its clock",
            timeout=10.0,
        )

    # -- what the database holds -------------------------------------------------

    async def stored(self, checkpoint_id: str) -> bytes | None:
        """The state stored under ``checkpoint_id``, None when there is none."""
        return await self.persistence.get_checkpoint(self.instance_id, TENANT, checkpoint_id)

    async def status(self) -> Status:
        details = await self.persistence.get_instance(self.instance_id)
        return details.instance.status

    async def pending_signal(self) -> SignalType | None:
        details = await self.persistence.get_instance(self.instance_id)
        signal = details.pending_signal
        return None if signal is None else signal.signal_type

    async def events(self) -> list[tuple[EventType, bytes]]:
        """The ends, pauses and custom events the workflow reported, oldest first."""
        records = await self.persistence.list_events(self.instance_id, None, None, 1000, 0)
        reported = [
            (record.event_type, record.payload)
            for record in records
            if record.event_type in _REPORTED
        ]
        return reported[::-1]

    def attempts(self) -> list[tuple[str, int, str | None]]:
        """The failed step attempts the client recorded (``retry_attempt`` calls)."""
        return [
            (fields["checkpoint_id"], fields["attempt_number"], fields.get("error_message"))
            for operation, fields in self.sent
            if operation == "retry_attempt"
        ]

    # -- what an operator, or another run, does ----------------------------------

    async def send_signal(self, signal_type: SignalType, payload: bytes = b"") -> None:
        """``runtara signal ID TYPE``."""
        await self.persistence.send_signal(self.instance_id, signal_type, payload)

    async def send_custom_signal(self, checkpoint_id: str, payload: bytes) -> None:
        """``runtara custom-signal ID CP``."""
        await self.persistence.send_custom_signal(self.instance_id, checkpoint_id, payload)

    async def take_custom_signal(self, checkpoint_id: str) -> bytes | None:
        """The custom signal still waiting for ``checkpoint_id`` (consumed), or None."""
        signals = await self.persistence.poll_signals(self.instance_id, TENANT, checkpoint_id)
        return None if signals.custom_signal is None else signals.custom_signal.payload

    async def save_checkpoint(self, checkpoint_id: str, state: bytes) -> None:
        """Another run of this instance saves ``checkpoint_id`` first."""
        await self.persistence.save_checkpoint(self.instance_id, TENANT, checkpoint_id, state)
