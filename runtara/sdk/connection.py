"""Registered connections to runtara-core that heal themselves.

``Connection`` owns at most one QUIC connection at a time. When it is lost
(server restart, network failure, idle timeout) it connects again with
bounded exponential backoff. Several instances of one tenant may share it
(PROTOCOL.md section 5): each has an ``InstanceSession``, which registers its
instance on the current connection before any of its calls goes out, and
registers again on every new one. ``InstanceSession.call`` retries:

- an error response whose ``retryable`` flag is set (PROTOCOL.md section 4);
- a call that failed because the connection was lost, or that timed out
  (the connection is then reset, as a timeout means the peer is gone).

Retrying is safe for every operation of the protocol, which is why the
session does it for all of them (the rules are documented in docs/sdk.md):
checkpoint is save-or-return, sleep resumes the same durable sleep,
get_checkpoint / get_instance_status / health are reads, retry_attempt
keeps one row per attempt, signal_ack is sent idempotent, a registration
repeated with the session's run id is not a new start, and a duplicate
heartbeat or custom event is harmless. Errors that will not go away by
themselves are raised at once: a non-retryable error response, a stream
reset, an in-band registration refusal (``RegistrationRefused``), an
unusable TLS configuration.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from runtara.client import RemoteError, RuntaraClient
from runtara.model import Registration
from runtara.quic.client import CertificateMismatch, QuicConnectionError, Termination
from runtara.sdk import results
from runtara.sdk.config import SdkConfig
from runtara.sdk.errors import RegistrationRefused, ServerUnreachable, SessionClosed

__all__ = ["Connection", "InstanceSession", "Link", "LinkFactory", "connect_link"]

_TLS_ERRORS = range(0x100, 0x200)
"""QUIC CRYPTO_ERROR codes (TLS alerts): a rejected certificate or ALPN, not a lost server."""


class Link(Protocol):
    """One connection to the server, as the session uses it."""

    def call(self, operation: str, fields: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        """Run one operation; its result map, or ``RemoteError``."""
        ...

    def close(self) -> Deferred[None]:
        """Close the connection; fires once it has ended."""
        ...

    def when_closed(self) -> Deferred[Termination]:
        """Fires once the connection has ended, for whatever reason."""
        ...


class _QuicLink:
    """A ``Link`` over ``runtara.client.RuntaraClient``."""

    def __init__(self, client: RuntaraClient) -> None:
        self._client = client

    def call(self, operation: str, fields: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        return self._client.call(operation, fields)

    def close(self) -> Deferred[None]:
        return self._client.close()

    def when_closed(self) -> Deferred[Termination]:
        return self._client.connection.when_closed()


async def connect_link(reactor: Any, config: SdkConfig) -> Link:
    """Open a QUIC connection to the server ``config`` names (not registered yet)."""
    client = await RuntaraClient.connect(
        reactor, config.server_host, config.server_port, **config.quic_options()
    )
    return _QuicLink(client)


LinkFactory = Callable[[], Awaitable[Link]]


class Connection:
    """One connection to runtara-core at a time, re-established when lost.

    ``connect`` opens a new, unregistered ``Link`` (``connect_link`` bound
    to a reactor and a configuration, or a test double). ``config`` gives
    the server, the reconnection backoff and ``give_up_after``; its
    ``instance_id`` is not used: every ``session`` names its own instance.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, config: SdkConfig, connect: LinkFactory) -> None:
        self.clock = clock
        self.config = config
        self._connect = connect
        self._link: Link | None = None
        self._establishing: Deferred[Link] | None = None
        self._waiters: list[Deferred[Link]] = []
        self._sessions: list[InstanceSession] = []
        self._closed = False
        self.connections = 0
        """How many connections were opened so far (1 + reconnections)."""

    @property
    def current(self) -> Link | None:
        """The connection that is up right now, if any."""
        return self._link

    @property
    def connected(self) -> bool:
        return self._link is not None

    def session(self, instance_id: str, *, run_id: str | None = None) -> InstanceSession:
        """A session for ``instance_id`` over this connection (not registered yet)."""
        return InstanceSession(
            self.clock, self.config.replace(instance_id=instance_id), connection=self, run_id=run_id
        )

    def link(self) -> Deferred[Link]:
        """Fire with the connection, connecting first if there is none.

        Fails with ``ServerUnreachable`` after ``give_up_after``, at once for
        a rejected certificate or ALPN, and with ``SessionClosed`` once closed.
        """
        if self._closed:
            return fail(SessionClosed("the runtara connection is closed"))
        if self._link is not None:
            return succeed(self._link)
        waiter: Deferred[Link] = Deferred()
        self._waiters.append(waiter)
        if self._establishing is None:
            self._establishing = ensureDeferred(self._establish())
            self._establishing.addBoth(self._established)
        return waiter

    def forget(self, link: Link, reason: object) -> None:
        """``link`` was found dead: stop using it (a new one is made on demand)."""
        if self._link is link:
            self._link = None
            self._log.warn(
                "connection to runtara-core at {address} lost ({reason}); reconnecting",
                address=self.config.server_addr,
                reason=reason,
            )

    def reset(self, link: Link, reason: object) -> None:
        """``link`` stopped answering: forget it and close it."""
        self.forget(link, reason)
        link.close()

    async def close(self) -> None:
        """Close every session and the connection; nothing reconnects afterwards."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions):
            await session.close()
        if self._establishing is not None:
            self._establishing.cancel()
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    # -- sessions --------------------------------------------------------------

    def _attach(self, session: InstanceSession) -> None:
        self._sessions.append(session)

    def _detach(self, session: InstanceSession) -> None:
        if session in self._sessions:
            self._sessions.remove(session)

    # -- establishing ------------------------------------------------------------

    async def _establish(self) -> Link:
        started = self.clock.seconds()
        failures = 0
        while True:
            try:
                return await self._connect()
            except (QuicConnectionError, OSError, defer.TimeoutError) as error:
                # OSError covers a failed DNS lookup of the server's name.
                if _is_permanent(error):
                    raise
                reason: BaseException = error
            failures += 1
            elapsed = self.clock.seconds() - started
            give_up_after = self.config.give_up_after
            if give_up_after is not None and elapsed >= give_up_after:
                raise ServerUnreachable(elapsed, reason)
            delay = self.config.reconnect_backoff.delay(failures)
            self._log.warn(
                "cannot reach runtara-core at {address} ({reason}); retrying in {delay:.2f} s",
                address=self.config.server_addr,
                reason=reason,
                delay=delay,
            )
            await deferLater(self.clock, delay)

    def _established(self, result: Link | Failure) -> None:
        self._establishing = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                result = Failure(SessionClosed("the runtara connection is closed"))
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(result)
            return
        if self._closed:
            result.close()
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(SessionClosed("the runtara connection is closed"))
            return
        self._link = result
        self.connections += 1
        result.when_closed().addCallback(self._lost, result)
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(result)
        for session in list(self._sessions):
            session.register_again()

    def _lost(self, termination: Termination, link: Link) -> None:
        """A connection ended: forget it and, while sessions use it, reconnect right away."""
        if self._link is not link or self._closed:
            return
        self.forget(link, termination.reason or f"error 0x{termination.error_code:X}")
        if any(session.registration is not None for session in self._sessions):
            self.link().addErrback(self._reconnect_failed)

    def _reconnect_failed(self, failure: Failure) -> None:
        if not failure.check(SessionClosed):
            self._log.error(
                "cannot reconnect to runtara-core at {address}: {reason}",
                address=self.config.server_addr,
                reason=failure.getErrorMessage(),
            )


class InstanceSession:
    """Calls for one instance over a connection that is re-established when lost.

    ``connect`` gives the session a ``Connection`` of its own, closed with
    the session; ``connection`` shares one (``Connection.session``). Every
    registration of the session carries ``run_id``, random by default.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        config: SdkConfig,
        connect: LinkFactory | None = None,
        *,
        connection: Connection | None = None,
        run_id: str | None = None,
    ) -> None:
        if (connect is None) == (connection is None):
            raise TypeError("give an InstanceSession either connect or connection")
        self._clock = clock
        self._config = config
        self._owns_connection = connection is None
        if connection is None:
            assert connect is not None
            connection = Connection(clock, config, connect)
        self._connection = connection
        self.run_id = run_id if run_id is not None else secrets.token_hex(16)
        """Sent with every registration of this session, so that registering again after
        a lost answer or connection is not a new start (docs/protocol.md 8.1)."""
        self._registered_on: Link | None = None
        self._registering = False
        self._registration: Deferred[Link] | None = None
        self._waiters: list[Deferred[Link]] = []
        self._calls: set[Deferred[dict[str, Any]]] = set()
        self._closed = False
        self.registration: Registration | None = None
        """The answer to the latest successful registration."""
        self.connections = 0
        """How many connections the instance was registered on so far (1 + reconnections)."""
        connection._attach(self)

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def connected(self) -> bool:
        """Whether the instance is registered on a connection that is up right now."""
        link = self._connection.current
        return link is not None and link is self._registered_on

    async def open(self) -> Registration:
        """Connect if needed and register (once); the registration answer."""
        await self._ready()
        assert self.registration is not None
        return self.registration

    async def call(
        self, operation: str, fields: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run ``operation`` with ``fields``; its result map.

        Retries as the module docstring says, waiting ``reconnect_backoff``
        between attempts, for at most ``give_up_after`` seconds after the
        first failure; then the last ``RemoteError`` is raised, or
        ``ServerUnreachable``. ``timeout`` (default ``request_timeout``)
        bounds each attempt.
        """
        timeout = self._config.request_timeout if timeout is None else timeout
        failures = 0
        first_failure_at: float | None = None
        while True:
            link = await self._ready()
            try:
                return await self._attempt(link, operation, fields, timeout)
            except RemoteError as error:
                if not error.retryable:
                    raise
                reason: BaseException = error
            except QuicConnectionError as error:
                self._connection.forget(link, error)
                reason = error
            except defer.TimeoutError:
                reason = TimeoutError(f"{operation} got no answer within {timeout:g} s")
                self._connection.reset(link, reason)
            except defer.CancelledError:
                if not self._closed:
                    raise
                reason = SessionClosed("the runtara client is closed")
            if self._closed:
                raise SessionClosed("the runtara client is closed") from reason
            failures += 1
            now = self._clock.seconds()
            first_failure_at = now if first_failure_at is None else first_failure_at
            give_up_after = self._config.give_up_after
            if give_up_after is not None and now - first_failure_at >= give_up_after:
                if isinstance(reason, RemoteError):
                    raise reason
                raise ServerUnreachable(now - first_failure_at, reason)
            delay = self._config.reconnect_backoff.delay(failures)
            self._log.warn(
                "{operation} for {instance_id} failed ({reason}); retrying in {delay:.2f} s",
                operation=operation,
                instance_id=self._config.instance_id,
                reason=reason,
                delay=delay,
            )
            await deferLater(self._clock, delay)

    def register_again(self) -> None:
        """A new connection is up: register on it now if this session was registered before."""
        if self._closed or self.registration is None:
            return
        self._ready().addErrback(self._register_again_failed)

    async def close(self) -> None:
        """End the session: its pending and later calls fail with ``SessionClosed``.

        A connection of its own is closed with it; a shared one stays up.
        """
        if self._closed:
            return
        self._closed = True
        self._connection._detach(self)
        if self._registration is not None:
            self._registration.cancel()
        for call in list(self._calls):
            call.cancel()
        if self._owns_connection:
            await self._connection.close()

    # -- registering ------------------------------------------------------------

    def _ready(self) -> Deferred[Link]:
        """Fire with a connection the instance is registered on, registering first."""
        if self._closed:
            return fail(SessionClosed("the runtara client is closed"))
        link = self._connection.current
        if link is not None and link is self._registered_on:
            return succeed(link)
        waiter: Deferred[Link] = Deferred()
        self._waiters.append(waiter)
        if not self._registering:
            # Flagged first: the registration may complete before ensureDeferred returns,
            # and a new connection asks every session to register meanwhile.
            self._registering = True
            self._registration = ensureDeferred(self._establish())
            self._registration.addBoth(self._established)
        return waiter

    async def _establish(self) -> Link:
        started = self._clock.seconds()
        failures = 0
        while True:
            link = await self._connection.link()
            try:
                self.registration = await self._register(link)
            except QuicConnectionError as error:
                self._connection.forget(link, error)
                reason: BaseException = error
            except defer.TimeoutError as error:
                self._connection.reset(link, error)
                reason = error
            except RemoteError as error:
                if not error.retryable:
                    raise
                reason = error
            else:
                self.connections += 1
                self._log.info(
                    "instance {instance_id} registered with runtara-core at {address}"
                    " (status {status}, resumed={resumed}, connection {connections})",
                    instance_id=self._config.instance_id,
                    address=self._config.server_addr,
                    status=self.registration.status.value,
                    resumed=self.registration.resumed,
                    connections=self.connections,
                )
                return link
            failures += 1
            elapsed = self._clock.seconds() - started
            give_up_after = self._config.give_up_after
            if give_up_after is not None and elapsed >= give_up_after:
                raise ServerUnreachable(elapsed, reason)
            delay = self._config.reconnect_backoff.delay(failures)
            self._log.warn(
                "registering {instance_id} failed ({reason}); retrying in {delay:.2f} s",
                instance_id=self._config.instance_id,
                reason=reason,
                delay=delay,
            )
            await deferLater(self._clock, delay)

    async def _register(self, link: Link) -> Registration:
        config = self._config
        fields: dict[str, Any] = {
            "instance_id": config.instance_id,
            "tenant_id": config.tenant_id,
            "run_id": self.run_id,
            "replay_index": True,
        }
        if config.auth_token is not None:
            fields["token"] = config.auth_token
        answer = await self._attempt(link, "register_instance", fields, config.request_timeout)
        registration = results.registration(answer)
        if not registration.success:
            raise RegistrationRefused(config.instance_id, registration.error, registration.status)
        return registration

    def _established(self, result: Link | Failure) -> None:
        self._registering = False
        self._registration = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                result = Failure(SessionClosed("the runtara client is closed"))
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(result)
            return
        if self._closed:
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(SessionClosed("the runtara client is closed"))
            return
        self._registered_on = result
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(result)

    def _register_again_failed(self, failure: Failure) -> None:
        if not failure.check(SessionClosed):
            self._log.error(
                "instance {instance_id} cannot register again: {reason}",
                instance_id=self._config.instance_id,
                reason=failure.getErrorMessage(),
            )

    async def _attempt(
        self, link: Link, operation: str, fields: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        answer = ensureDeferred(_as_coroutine(link.call(operation, fields)))
        answer.addTimeout(timeout, self._clock)
        self._calls.add(answer)
        try:
            return await answer
        finally:
            self._calls.discard(answer)


async def _as_coroutine(awaitable: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await awaitable


def _is_permanent(error: BaseException) -> bool:
    """Whether connecting again cannot help: a TLS or ALPN rejection."""
    if isinstance(error, CertificateMismatch):
        return True
    if isinstance(error, QuicConnectionError):
        return not error.application and error.error_code in _TLS_ERRORS
    return False
