"""``HttpService``: the management HTTP server as a Twisted service.

It binds once the database is ready (migrated), so its first request finds
the current schema, and it unbinds before the database closes (it is a
later child of the service tree, stopped earlier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.server import Site


@dataclass(frozen=True)
class HttpAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class HttpService(service.Service):
    """Listens on ``host:port`` (TCP) with the site ``make_site()`` builds, once ``after()``
    has fired; ``ready`` fires with the bound address, or fails with why not."""

    name = "http"
    _log = Logger()

    def __init__(
        self,
        host: str,
        port: int,
        make_site: Callable[[], Site],
        reactor: Any,
        after: Callable[[], Deferred[Any]],
    ) -> None:
        self._host = host
        self._port_number = port
        self._make_site = make_site
        self._reactor = reactor
        self._after = after
        self.ready: Deferred[HttpAddress] = Deferred()
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._after().addCallback(lambda _: self._listen()).chainDeferred(self.ready)

    def _listen(self) -> HttpAddress:
        self._port = self._reactor.listenTCP(
            self._port_number, self._make_site(), interface=self._host
        )
        bound = self._port.getHost()
        address = HttpAddress(bound.host, bound.port)
        self._log.info("management HTTP server (API, dashboard, metrics) on {url}", url=address.url)
        return address

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._port is None:
            return succeed(None)
        port, self._port = self._port, None
        stopped: Deferred[None] = port.stopListening()
        return stopped
