"""Connections to an in-process runtara-core (``local_core``) that lose answers on purpose.

``LossyLink`` is a real QUIC connection (``runtara.sdk.connection.connect_link``)
that, for the calls a test picks, lets the server handle the call and commit,
then throws the answer away and closes the connection: exactly what a client
sees when an answer is lost together with its connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from runtara.model import EventType
from runtara.quic.client import QuicConnectionError, Termination
from runtara.runtime import RunningCore
from runtara.sdk import SdkConfig
from runtara.sdk.connection import Link, connect_link

TENANT = "sdk-tests"

LoseWhen = Callable[[str, dict[str, Any], dict[str, Any]], bool]
"""``lose(operation, fields, answer)``: whether this answer is lost with its connection."""


def config_for(core: RunningCore, instance_id: str, **overrides: Any) -> SdkConfig:
    settings: dict[str, Any] = {
        "instance_id": instance_id,
        "tenant_id": TENANT,
        "server_port": core.port,
        "ca_file": str(core.certificate_path),
        "heartbeat_interval": 0,
        "give_up_after": 20.0,
    }
    settings.update(overrides)
    return SdkConfig(**settings)


def persistence_of(core: RunningCore) -> Any:
    return core.service.database.persistence


async def started_events(core: RunningCore, instance_id: str) -> int:
    events = await persistence_of(core).list_events(instance_id, EventType.STARTED, None, 100, 0)
    return len(events)


class LossyLink:
    """A real connection whose chosen answers are lost together with the connection."""

    def __init__(self, link: Link, lose: LoseWhen, log: list[tuple[str, dict[str, Any]]]) -> None:
        self._link = link
        self._lose = lose
        self._log = log

    async def call(self, operation: str, fields: dict[str, Any]) -> dict[str, Any]:
        self._log.append((operation, fields))
        answer = await self._link.call(operation, fields)
        if self._lose(operation, fields, answer):
            await self._link.close()
            raise QuicConnectionError(0, "connection lost with the answer (test)")
        return answer

    def close(self) -> Deferred[None]:
        return self._link.close()

    def when_closed(self) -> Deferred[Termination]:
        return self._link.when_closed()


class LossyConnector:
    """A ``LinkFactory`` of ``LossyLink``s; ``calls`` records every call of every link."""

    def __init__(self, reactor: Any, config: SdkConfig, lose: LoseWhen | None = None) -> None:
        self._reactor = reactor
        self._config = config
        self.lose: LoseWhen = lose or (lambda operation, fields, answer: False)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.links = 0

    async def __call__(self) -> Link:
        link = await connect_link(self._reactor, self._config)
        self.links += 1
        return LossyLink(link, lambda *call: self.lose(*call), self.calls)

    def operations(self) -> list[str]:
        return [operation for operation, _ in self.calls]


def lose_once(operation: str, when: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None):
    """A ``LoseWhen`` that loses the first answer to ``operation`` (matching ``when``)."""
    lost: list[bool] = []

    def lose(name: str, fields: dict[str, Any], answer: dict[str, Any]) -> bool:
        if lost or name != operation or (when is not None and not when(fields, answer)):
            return False
        lost.append(True)
        return True

    return lose
