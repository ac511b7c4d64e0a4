"""``TenantConnection``: many workflow instances of one tenant over one QUIC connection.

::

    connection = await TenantConnection.open(reactor, SdkConfig(tenant_id="acme", ...))
    outcomes = await gatherResults([
        ensureDeferred(connection.run_workflow(process_order, instance_id))
        for instance_id in ("order-1", "order-2", "order-3")
    ])
    await connection.close()

The protocol lets one connection register several instances of a tenant
(PROTOCOL.md section 5), so starting an instance costs its registration, not
a QUIC handshake. Each instance keeps its own session (its registration,
run id, heartbeats and retries) and sees only its own checkpoints and
signals; when the connection is lost it is re-established once and every
instance still running registers again on it.
"""

from __future__ import annotations

from typing import Any

from runtara.sdk.client import InstanceClient
from runtara.sdk.config import SdkConfig
from runtara.sdk.connection import Connection, LinkFactory, connect_link
from runtara.sdk.retry import RetryPolicy
from runtara.sdk.runner import WorkflowFunction, WorkflowOutcome, execute_workflow
from runtara.sdk.serializers import Serializer

__all__ = ["TenantConnection"]


class TenantConnection:
    """One self-healing connection to runtara-core for the instances of one tenant.

    ``config`` names the server, the tenant, its token and the timeouts; its
    ``instance_id`` is not used (leave it empty). ``connect`` replaces the
    QUIC connection (tests); by default it is ``connect_link``.
    """

    def __init__(self, reactor: Any, config: SdkConfig, connect: LinkFactory | None = None) -> None:
        self._reactor = reactor
        self.config = config
        self.connection = Connection(
            reactor, config, connect or (lambda: connect_link(reactor, config))
        )

    @classmethod
    async def open(
        cls, reactor: Any, config: SdkConfig, connect: LinkFactory | None = None
    ) -> TenantConnection:
        """Connect (retrying as ``config`` says) and return the connection."""
        tenant = cls(reactor, config, connect)
        await tenant.connection.link()
        return tenant

    async def client(self, instance_id: str) -> InstanceClient:
        """Register ``instance_id`` on this connection; its client.

        Closing the client ends its session only: the connection stays up
        for the other instances. Raises ``RegistrationRefused`` when the
        instance cannot run.
        """
        session = self.connection.session(instance_id)
        client = InstanceClient(
            self._reactor, self.config.replace(instance_id=instance_id), session
        )
        try:
            await session.open()
        except BaseException:
            await session.close()
            raise
        return client

    async def run_workflow(
        self,
        fn: WorkflowFunction,
        instance_id: str,
        *,
        serializer: Serializer | None = None,
        retry_policy: RetryPolicy | None = None,
        signal_poll_interval: float = 1.0,
    ) -> WorkflowOutcome:
        """``runtara.sdk.run_workflow`` for ``instance_id``, over this connection.

        Registers the instance, runs ``fn`` to its end with heartbeats,
        reports the end, and closes the instance's session (not the
        connection). Raises as ``run_workflow`` does.
        """
        client = await self.client(instance_id)
        try:
            return await execute_workflow(
                client,
                self._reactor,
                fn,
                serializer=serializer,
                retry_policy=retry_policy,
                signal_poll_interval=signal_poll_interval,
            )
        finally:
            await client.close()

    async def close(self) -> None:
        """End every instance's session and close the connection."""
        await self.connection.close()
