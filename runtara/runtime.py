"""Run runtara-core inside another Twisted program.

::

    import os

    from twisted.internet import task

    from runtara.config import config_from_env
    from runtara.runtime import start_core


    async def main(reactor):
        config = config_from_env(os.environ, quic_port=0, http_port=0)
        core = await start_core(config, reactor)
        print(core.port, core.fingerprint, core.certificate_path, core.http_url)
        await core.stop()


    task.react(main)

This starts exactly the service that ``twistd runtara-core`` and
``runtara.tac`` start (``runtara.service.build_service``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from runtara.config import Config
from runtara.service import CoreService, ListeningAddress, build_service


@dataclass(frozen=True)
class RunningCore:
    """A started runtara-core."""

    service: CoreService
    address: ListeningAddress

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def http_url(self) -> str | None:
        """``http://host:port`` of the management HTTP server; None when it is off."""
        address = self.service.http_address
        return None if address is None else address.url

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the server certificate (``AA:BB:...``)."""
        certificate = self.service.listener.certificate
        assert certificate is not None
        return certificate.fingerprint

    @property
    def certificate_path(self) -> Path:
        """The PEM certificate clients can use as their CA file."""
        certificate = self.service.listener.certificate
        assert certificate is not None
        return certificate.cert_path

    def stop(self) -> Deferred[None]:
        """Stop serving: drain calls, close connections, close the database."""
        return self.service.stopService()


async def start_core(config: Config, reactor: Any) -> RunningCore:
    """Start runtara-core and return once it listens.

    Fails with the reason (and leaves nothing running) when it cannot start.
    """
    core = build_service(config, reactor)
    core.startService()
    try:
        address = await core.when_ready()
    except BaseException:
        await core.stopService()
        raise
    return RunningCore(core, address)
