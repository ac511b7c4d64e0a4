"""The composition root: ``build_service(config, reactor)``.

The service tree, in dependency order::

    CoreService (MultiService; stops its children one after another, last first)
      |- DatabaseService   opens the database and applies migrations
      |- ListenerService   waits for the database, then binds QUIC/UDP
      |- HttpService       worker 0 only: waits for the database, then binds the
                           management HTTP server (unless RUNTARA_HTTP_PORT=off)
      `- WorkerSupervisor  worker 0 of several only: starts workers 1..N-1
                           once the port is bound (``runtara.supervisor``)

Stopping runs in reverse: the other workers stop (each the same way), the
HTTP server unbinds, then the listener refuses new calls, drops sleeping
ones, lets calls in flight commit and answer, closes every connection with
an application close and unbinds; only then is the database closed.

The process's Prometheus metrics (``runtara.metrics.Metrics``) are made
here, once, and handed to what observes them.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from runtara.admin import Admin
from runtara.certificate import ServerCertificate, load_certificate, load_or_create_certificate
from runtara.config import Config, UnusableStateDirectory, exposure_refusal, make_state_dir
from runtara.dispatch import Dispatcher
from runtara.frames import HEADER_SIZE
from runtara.intake import RequestLimits
from runtara.interfaces import IPersistence
from runtara.logbridge import bridge_stdlib_logging
from runtara.metrics import InstanceCounts, Metrics
from runtara.operations import OperationContext
from runtara.persistence import open_persistence
from runtara.quic.port import listen_udp
from runtara.quic.reset import StatelessResetter, load_or_create_reset_key
from runtara.quic.server import QuicServerProtocol, server_configuration
from runtara.rpc import AppErrorCode, RpcServer
from runtara.session import Admission
from runtara.sleeper import Sleeper
from runtara.supervisor import WorkerSupervisor
from runtara.web.service import HttpAddress, HttpService
from runtara.web.site import management_site

UDP_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
"""Asked of the kernel for the listening socket (capped by net.core.rmem_max).

Bursts from many instances overflow the usual 208 KiB default and the kernel
drops datagrams, which QUIC then retransmits late (docs/benchmarks.md)."""

DRAIN_TIMEOUT_SECONDS = 10.0
"""How long shutdown waits for calls in flight before closing connections."""


@dataclass(frozen=True)
class ListeningAddress:
    host: str
    port: int


class DatabaseService(service.Service):
    """Starts the persistence provider and migrates it; closes it last."""

    name = "database"
    _log = Logger()

    def __init__(self, persistence: IPersistence, description: str) -> None:
        self.persistence = persistence
        self.description = description
        self._ready = _Outcome()

    def when_ready(self) -> Deferred[None]:
        """Fire once the database is open and migrated, or fail with why not."""
        return self._ready.observe()

    def startService(self) -> None:
        super().startService()
        self._log.info("database: {database}", database=self.description)
        Deferred.fromCoroutine(self._open()).addBoth(self._ready.fire)

    async def _open(self) -> None:
        await self.persistence.start()
        version = await self.persistence.migrate()
        self._log.info("database schema version {version}", version=version)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.persistence.close()


class ListenerService(service.Service):
    """Binds the QUIC listener once the database is ready."""

    name = "listener"
    _log = Logger()

    def __init__(
        self, config: Config, reactor: Any, database: DatabaseService, rpc: RpcServer
    ) -> None:
        self._config = config
        self._reactor = reactor
        self._database = database
        self.rpc = rpc
        self.ready: Deferred[ListeningAddress] = Deferred()
        self.certificate: ServerCertificate | None = None
        self._protocol: QuicServerProtocol | None = None
        self._port: Any = None

    @property
    def connection_count(self) -> int:
        """QUIC connections open now (0 before binding)."""
        return 0 if self._protocol is None else self._protocol.connection_count

    def startService(self) -> None:
        super().startService()
        self._database.when_ready().addCallback(lambda _: self._listen()).chainDeferred(self.ready)

    def _listen(self) -> ListeningAddress:
        config = self._config
        if config.unauthenticated_exposure and not config.allow_unauthenticated:
            raise ValueError(exposure_refusal(config.quic_host))
        if config.tls_cert is not None and config.tls_key is not None:
            self.certificate = load_certificate(config.tls_cert, config.tls_key)
        else:
            self.certificate = load_or_create_certificate(config.state_dir)
        self._log.info(
            "TLS certificate {path}, SHA-256 fingerprint {fingerprint}",
            path=str(self.certificate.cert_path),
            fingerprint=self.certificate.fingerprint,
        )
        quic_configuration = server_configuration(
            self.certificate.certificate,
            self.certificate.private_key,
            certificate_chain=self.certificate.chain,
            stream_window=HEADER_SIZE + config.max_message_bytes,
        )
        resetter = StatelessResetter(load_or_create_reset_key(config.state_dir), self._reactor)
        self._protocol = QuicServerProtocol(
            self._reactor, quic_configuration, self.rpc.handler_factory, resetter
        )
        self._port = listen_udp(
            self._reactor,
            config.quic_host,
            config.quic_port,
            self._protocol,
            reuse_port=config.workers > 1,
        )
        receive_buffer = _enlarge_receive_buffer(self._port.getHandle())
        host = self._port.getHost()
        address = ListeningAddress(host.host, host.port)
        self._log.info(
            "runtara-core listening on QUIC {host}:{port} (ALPN runtara/1, "
            "UDP receive buffer {receive_buffer} bytes)",
            host=address.host,
            port=address.port,
            receive_buffer=receive_buffer,
        )
        if config.unauthenticated_exposure:
            self._log.warn(
                "runtara-core listens on {host} without tenant tokens"
                " (--allow-unauthenticated): anyone who can reach UDP port {port} can"
                " register instances and read or change their state",
                host=address.host,
                port=address.port,
            )
        return address

    async def _stop(self) -> None:
        drained = self.rpc.drain()
        drained.addTimeout(DRAIN_TIMEOUT_SECONDS, self._reactor)
        try:
            await drained
        except TimeoutError:
            self._log.warn(
                "calls still in flight after {seconds}s; closing anyway",
                seconds=DRAIN_TIMEOUT_SECONDS,
            )
        if self._protocol is not None:
            await self._protocol.close_all(AppErrorCode.SHUTTING_DOWN, "server shutting down")
        if self._port is not None:
            await self._port.stopListening()
        self._log.info("listener stopped")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._port is None:
            return succeed(None)
        return Deferred.fromCoroutine(self._stop())


class CoreService(service.MultiService):
    """runtara-core: the database, the listener, the HTTP server and the other workers
    (if any)."""

    _log = Logger()

    def __init__(
        self,
        state_dir: Path,
        database: DatabaseService,
        listener: ListenerService,
        http: HttpService | None,
        metrics: Metrics,
        workers: WorkerSupervisor | None = None,
    ) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.database = database
        self.listener = listener
        self.http = http
        self.metrics = metrics
        self.workers = workers
        self.http_address: HttpAddress | None = None
        self._ready = _Outcome()
        database.setServiceParent(self)
        listener.setServiceParent(self)
        if http is not None:
            http.setServiceParent(self)
        if workers is not None:
            workers.setServiceParent(self)

    def when_ready(self) -> Deferred[ListeningAddress]:
        """Fire with the QUIC address once serving (HTTP and every worker included), or
        fail with why not."""
        return self._ready.observe()

    def startService(self) -> None:
        bridge_stdlib_logging()
        try:
            # The embedded database and the generated certificate live here.
            make_state_dir(self.state_dir)
        except UnusableStateDirectory:
            service.Service.startService(self)
            self._failed_to_start(Failure())
            return
        super().startService()
        Deferred.fromCoroutine(self._serving()).addCallbacks(
            self._ready.fire, self._failed_to_start
        )

    async def _serving(self) -> ListeningAddress:
        waits: list[Deferred[Any]] = [self.listener.ready]
        if self.http is not None:
            waits.append(self.http.ready)
        try:
            address, *http = await gatherResults(waits, consumeErrors=True)
        except Exception as error:
            failure = getattr(error, "subFailure", None)
            if failure is not None:
                failure.raiseException()
            raise
        self.http_address = http[0] if http else None
        if self.workers is not None:
            await self.workers.start_workers(address)
        return address

    def _failed_to_start(self, failure: Failure) -> None:
        self._log.critical(
            "runtara-core could not start: {reason}", reason=failure.getErrorMessage()
        )
        self._ready.fire(failure)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_reverse())

    async def _stop_in_reverse(self) -> None:
        for child in reversed(list(self)):
            if child.running:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self._log.failure("stopping {name} failed", name=child.name)


def _enlarge_receive_buffer(udp_socket: socket.socket) -> int:
    """Ask for ``UDP_RECEIVE_BUFFER_BYTES``; return what the kernel granted
    (Linux reports twice the size it keeps for data, counting its bookkeeping)."""
    udp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
    granted: int = udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


class _Outcome:
    """A result that any number of observers may wait for, before or after it arrives."""

    def __init__(self) -> None:
        self._fired = False
        self._result: Any = None
        self._observers: list[Deferred[Any]] = []

    def fire(self, result: Any) -> None:
        self._fired, self._result = True, result
        observers, self._observers = self._observers, []
        for observer in observers:
            self._deliver(observer)

    def observe(self) -> Deferred[Any]:
        observer: Deferred[Any] = Deferred()
        if self._fired:
            self._deliver(observer)
        else:
            self._observers.append(observer)
        return observer

    def _deliver(self, observer: Deferred[Any]) -> None:
        if isinstance(self._result, Failure):
            observer.errback(self._result)
        else:
            observer.callback(self._result)


def build_service(config: Config, reactor: Any, *, worker: int = 0) -> CoreService:
    """The whole server for ``config``, not yet started.

    ``worker`` 0 is the server (and, with ``config.workers`` > 1, the
    supervisor of the other workers); workers 1 and up (``runtara.worker``)
    run the core protocol server only, on their share of the port.
    """
    metrics = Metrics(time.monotonic)
    persistence = open_persistence(
        config.database_url,
        reactor,
        reactor,
        pool_size=config.db_pool_size,
        lock_timeout_ms=config.db_lock_timeout_ms,
        statement_timeout_ms=config.db_statement_timeout_ms,
        metrics=metrics,
    )
    admission = Admission(config.max_concurrent_instances)
    sleeper = Sleeper(reactor)
    context = OperationContext(
        persistence=persistence,
        clock=reactor,
        admission=admission,
        sleeper=sleeper,
        auth_tokens=config.auth_tokens,
        started_at=reactor.seconds(),
    )
    limits = RequestLimits(
        max_message_bytes=config.max_message_bytes, max_buffered_bytes=config.max_buffered_bytes
    )
    rpc = RpcServer(Dispatcher(context, metrics), reactor, admission, sleeper, limits)
    database = DatabaseService(persistence, str(config.database_url))
    listener = ListenerService(config, reactor, database, rpc)
    metrics.watch(
        "runtara_quic_connections_open",
        "QUIC connections open now.",
        lambda: listener.connection_count,
    )
    metrics.watch(
        "runtara_sleeps_held", "Durable sleeps the server holds a timer for.", sleeper.__len__
    )
    http = None
    if worker == 0 and config.http_port is not None:
        admin = Admin(persistence, reactor, config.database_url)
        counts = InstanceCounts(metrics, persistence, reactor)
        http = HttpService(
            config.http_host,
            config.http_port,
            lambda: management_site(admin, metrics, counts, config.admin_token),
            reactor,
            database.when_ready,
        )
    workers = WorkerSupervisor(reactor, config) if worker == 0 and config.workers > 1 else None
    return CoreService(config.state_dir, database, listener, http, metrics, workers)
