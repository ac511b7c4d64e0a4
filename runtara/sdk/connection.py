"""A registered connection to runtara-core that heals itself.

``InstanceSession`` owns at most one QUIC connection at a time, registers
the instance on it before any call goes out, and when the connection is
lost (server restart, network failure, idle timeout) connects again with
bounded exponential backoff and registers again. ``call`` retries:

- an error response whose ``retryable`` flag is set (PROTOCOL.md section 4);
- a call that failed because the connection was lost, or that timed out
  (the connection is then reset, as a timeout means the peer is gone).

Retrying is safe for every operation of the protocol, which is why the
session does it for all of them (the rules are documented in docs/sdk.md):
checkpoint is save-or-return, sleep resumes the same durable sleep,
get_checkpoint / get_instance_status / health are reads, retry_attempt
keeps one row per attempt, signal_ack of an already acknowledged signal
changes nothing, and a duplicate heartbeat or custom event is harmless.
Errors that will not go away by themselves are raised at once: a
non-retryable error response, a stream reset, an in-band registration
refusal (``RegistrationRefused``), a rejected server certificate
(``ServerNotTrusted``, which says which setting to change), a refused ALPN.
"""

from __future__ import annotations

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
from runtara.sdk.errors import (
    RegistrationRefused,
    ServerNotTrusted,
    ServerUnreachable,
    SessionClosed,
)

__all__ = ["InstanceSession", "Link", "connect_link"]

_TLS_ERRORS = range(0x100, 0x200)
"""QUIC CRYPTO_ERROR codes (TLS alerts): a rejected certificate or ALPN, not a lost server."""

_CERTIFICATE_ALERTS = frozenset(0x100 + alert for alert in (42, 43, 44, 45, 46, 48))
"""The TLS alerts (RFC 8446 section 6) of a rejected certificate: bad, unsupported,
revoked, expired or unknown certificate, unknown CA."""


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


class InstanceSession:
    """Calls for one instance over a connection that is re-established when lost.

    ``connect`` opens a new, unregistered ``Link`` (``connect_link`` bound
    to a reactor and a configuration, or a test double).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, config: SdkConfig, connect: LinkFactory) -> None:
        self._clock = clock
        self._config = config
        self._connect = connect
        self._link: Link | None = None
        self._establishing: Deferred[Link] | None = None
        self._waiters: list[Deferred[Link]] = []
        self._closed = False
        self.registration: Registration | None = None
        """The answer to the latest successful registration."""
        self.connections = 0
        """How many connections were registered so far (1 + reconnections)."""

    @property
    def connected(self) -> bool:
        """Whether a registered connection is up right now."""
        return self._link is not None

    async def open(self) -> Registration:
        """Connect and register (once); the registration answer."""
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
                self._forget(link, error)
                reason = error
            except defer.TimeoutError:
                reason = TimeoutError(f"{operation} got no answer within {timeout:g} s")
                self._forget(link, reason)
                link.close()
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

    async def close(self) -> None:
        """Close the connection; pending and later calls fail with ``SessionClosed``."""
        if self._closed:
            return
        self._closed = True
        if self._establishing is not None:
            self._establishing.cancel()
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    # -- establishing a registered connection -------------------------------

    def _ready(self) -> Deferred[Link]:
        """Fire with a registered link, connecting first if there is none."""
        if self._closed:
            return fail(SessionClosed("the runtara client is closed"))
        if self._link is not None:
            return succeed(self._link)
        waiter: Deferred[Link] = Deferred()
        self._waiters.append(waiter)
        if self._establishing is None:
            self._establishing = ensureDeferred(self._establish())
            self._establishing.addBoth(self._established)
        return waiter

    async def _establish(self) -> Link:
        started = self._clock.seconds()
        failures = 0
        while True:
            try:
                return await self._connect_and_register()
            except (QuicConnectionError, OSError, RemoteError, defer.TimeoutError) as error:
                # OSError covers a failed DNS lookup of the server's name.
                if isinstance(error, QuicConnectionError) and _rejects_certificate(error):
                    raise _not_trusted(self._config, error) from error
                if _is_permanent(error):
                    raise
                reason: BaseException = error
            failures += 1
            elapsed = self._clock.seconds() - started
            give_up_after = self._config.give_up_after
            if give_up_after is not None and elapsed >= give_up_after:
                raise ServerUnreachable(elapsed, reason)
            delay = self._config.reconnect_backoff.delay(failures)
            self._log.warn(
                "cannot reach runtara-core at {address} ({reason}); retrying in {delay:.2f} s",
                address=self._config.server_addr,
                reason=reason,
                delay=delay,
            )
            await deferLater(self._clock, delay)

    async def _connect_and_register(self) -> Link:
        link = await self._connect()
        try:
            registration = await self._register(link)
        except BaseException:
            link.close()
            raise
        self.registration = registration
        self.connections += 1
        self._log.info(
            "instance {instance_id} registered with runtara-core at {address}"
            " (status {status}, resumed={resumed}, connection {connections})",
            instance_id=self._config.instance_id,
            address=self._config.server_addr,
            status=registration.status.value,
            resumed=registration.resumed,
            connections=self.connections,
        )
        return link

    async def _register(self, link: Link) -> Registration:
        config = self._config
        fields: dict[str, Any] = {"instance_id": config.instance_id, "tenant_id": config.tenant_id}
        if config.auth_token is not None:
            fields["token"] = config.auth_token
        answer = await self._attempt(link, "register_instance", fields, config.request_timeout)
        registration = results.registration(answer)
        if not registration.success:
            raise RegistrationRefused(config.instance_id, registration.error, registration.status)
        return registration

    def _established(self, result: Link | Failure) -> None:
        self._establishing = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                result = Failure(SessionClosed("the runtara client is closed"))
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(result)
            return
        if self._closed:
            result.close()
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(SessionClosed("the runtara client is closed"))
            return
        self._link = result
        result.when_closed().addCallback(self._lost, result)
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(result)

    # -- losing it -------------------------------------------------------------

    def _lost(self, termination: Termination, link: Link) -> None:
        """A connection ended: forget it and, unless closing, reconnect right away."""
        if self._link is not link or self._closed:
            return
        self._forget(link, termination.reason or f"error 0x{termination.error_code:X}")
        reconnected = self._ready()
        reconnected.addErrback(self._reconnect_failed)

    def _forget(self, link: Link, reason: object) -> None:
        if self._link is link:
            self._link = None
            self._log.warn(
                "connection of {instance_id} to runtara-core lost ({reason}); reconnecting",
                instance_id=self._config.instance_id,
                reason=reason,
            )

    def _reconnect_failed(self, failure: Failure) -> None:
        if not failure.check(SessionClosed):
            self._log.error(
                "instance {instance_id} cannot reconnect: {reason}",
                instance_id=self._config.instance_id,
                reason=failure.getErrorMessage(),
            )

    async def _attempt(
        self, link: Link, operation: str, fields: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        answer = ensureDeferred(_as_coroutine(link.call(operation, fields)))
        answer.addTimeout(timeout, self._clock)
        return await answer


async def _as_coroutine(awaitable: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await awaitable


def _rejects_certificate(error: QuicConnectionError) -> bool:
    """Whether ``error`` is our TLS stack refusing the server's certificate."""
    if isinstance(error, CertificateMismatch):
        return True
    return not error.application and error.error_code in _CERTIFICATE_ALERTS


def _not_trusted(config: SdkConfig, error: QuicConnectionError) -> ServerNotTrusted:
    """Why the server in ``config`` is not trusted, and which setting to change."""
    address = config.server_addr
    if isinstance(error, CertificateMismatch):
        return ServerNotTrusted(
            address,
            f"its certificate's SHA-256 fingerprint is {error.actual or 'unknown'},"
            f" not RUNTARA_SERVER_FINGERPRINT {error.expected}",
            "set RUNTARA_SERVER_FINGERPRINT to the fingerprint runtara-core logs when it"
            " starts (`runtara health` prints it)",
        )
    if "doesn't match" in error.reason:
        return ServerNotTrusted(
            address,
            f"its certificate is not for the name RUNTARA_SERVER_NAME says ({error.reason})",
            "set RUNTARA_SERVER_NAME to a name the certificate carries (localhost for the"
            " certificate runtara-core generates)",
        )
    if config.ca_file:
        reason = f"RUNTARA_CA_FILE {config.ca_file} does not vouch for its certificate"
    else:
        reason = "no CA this system trusts vouches for its certificate"
    return ServerNotTrusted(
        address,
        f"{reason} ({error.reason})",
        "set RUNTARA_CA_FILE to the server's certificate (<state dir>/tls-cert.pem where"
        " runtara-core runs) or RUNTARA_SERVER_FINGERPRINT to its SHA-256 fingerprint"
        " (`runtara health` prints both)",
    )


def _is_permanent(error: BaseException) -> bool:
    """Whether connecting again cannot help: a TLS/ALPN rejection or a refused token."""
    if isinstance(error, QuicConnectionError):
        return not error.application and error.error_code in _TLS_ERRORS
    if isinstance(error, RemoteError):
        return not error.retryable
    return False
