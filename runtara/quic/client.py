"""A Twisted QUIC client for runtara: one request per bidirectional stream.

``connect`` binds an ephemeral UDP port, handshakes with ALPN ``runtara/1``
and fires with a ``QuicClientConnection`` once the handshake completed.
``QuicClientConnection.request`` opens a stream, writes the request and
fires with everything the server wrote on that stream once its FIN arrives.

The server certificate is verified by default: against a CA (``cafile`` /
``cadata``, or the system's), or by its pinned SHA-256 fingerprint.
``verify=False`` skips verification and must be asked for explicitly.

A connection sends keep-alive PINGs every ``keepalive_interval`` seconds,
and every ``probe_interval`` seconds while a request is outstanding or a
PING is unanswered. A stateless reset from the server (RFC 9000 section
10.3: the server restarted and no longer knows the connection) ends the
connection at once; with the probes, a call held open across a server
restart fails within about ``probe_interval`` of the server answering again.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    PingAcknowledged,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from aioquic.tls import AlertDescription
from cryptography import x509
from twisted.internet import abstract
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from runtara.certificate import fingerprint_of, normalize_fingerprint
from runtara.quic._driver import QuicDriver, datagram_writer
from runtara.quic.reset import is_stateless_reset
from runtara.quic.server import ALPN, DEFAULT_FLOW_CONTROL_WINDOW

__all__ = [
    "STATELESS_RESET",
    "CertificateMismatch",
    "ConnectTimeout",
    "QuicClientConnection",
    "QuicConnectionError",
    "StreamResetError",
    "Termination",
    "client_configuration",
    "connect",
]

_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + AlertDescription.bad_certificate

STATELESS_RESET = "stateless reset: the server no longer knows this connection"
"""The reason of a ``Termination`` caused by a stateless reset from the server."""

_log = Logger()


class QuicConnectionError(Exception):
    """The QUIC connection terminated (or never completed its handshake)."""

    def __init__(self, error_code: int, reason: str, *, application: bool = False) -> None:
        kind = "application" if application else "transport"
        super().__init__(f"QUIC connection closed ({kind} error 0x{error_code:X}): {reason}")
        self.error_code = error_code
        self.reason = reason
        self.application = application


class CertificateMismatch(QuicConnectionError):
    """The server's certificate does not have the pinned SHA-256 fingerprint."""

    def __init__(self, expected: str, actual: str | None) -> None:
        super().__init__(
            _BAD_CERTIFICATE,
            f"server certificate fingerprint {actual or 'unknown'} is not the pinned {expected}",
        )
        self.expected = expected
        self.actual = actual


class ConnectTimeout(QuicConnectionError):
    """The handshake did not complete in time."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            QuicErrorCode.INTERNAL_ERROR, f"handshake not completed within {timeout:g} s"
        )
        self.timeout = timeout


class StreamResetError(Exception):
    """The server reset its side of a request's stream."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"stream {stream_id} reset by the server (error 0x{error_code:X})")
        self.stream_id = stream_id
        self.error_code = error_code


@dataclass(frozen=True)
class Termination:
    """How a connection ended."""

    error_code: int
    reason: str
    application: bool
    """True for an application close (ours or the peer's), False for a transport close."""


def client_configuration(
    *,
    server_name: str = "localhost",
    cafile: str | None = None,
    cadata: bytes | None = None,
    fingerprint: str | None = None,
    verify: bool = True,
    alpn: str | None = ALPN,
    idle_timeout: float = 30.0,
    flow_control_window: int = DEFAULT_FLOW_CONTROL_WINDOW,
) -> QuicConfiguration:
    """Return a client ``QuicConfiguration`` for the given verification mode.

    A pinned ``fingerprint`` alone turns aioquic's CA verification off (the
    pin is checked after the handshake); with a CA as well, both must pass.
    ``verify=False`` cannot be combined with a CA or a fingerprint.
    """
    if not verify and (cafile or cadata or fingerprint):
        raise ValueError("verify=False cannot be combined with cafile, cadata or fingerprint")
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn] if alpn is not None else None,
        server_name=server_name,
        idle_timeout=idle_timeout,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        max_data=flow_control_window,
        max_stream_data=flow_control_window,
    )
    if cafile or cadata:
        configuration.load_verify_locations(cafile=cafile, cadata=cadata)
    elif fingerprint or not verify:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


def connect(
    reactor: IReactorUDP,
    host: str,
    port: int,
    *,
    server_name: str = "localhost",
    cafile: str | None = None,
    cadata: bytes | None = None,
    fingerprint: str | None = None,
    verify: bool = True,
    alpn: str | None = ALPN,
    idle_timeout: float = 30.0,
    keepalive_interval: float = 10.0,
    probe_interval: float = 1.0,
    connect_timeout: float = 10.0,
    flow_control_window: int = DEFAULT_FLOW_CONTROL_WINDOW,
) -> Deferred[QuicClientConnection]:
    """Connect to a runtara server; fire with the connection once the handshake completed.

    ``reactor`` provides ``IReactorUDP`` and ``IReactorTime`` (and
    ``resolve`` when ``host`` is a name rather than an IPv4/IPv6 literal).
    ``server_name`` is the name the certificate must carry. Fails with
    ``QuicConnectionError`` when the connection terminates first (ALPN
    refused, certificate rejected), ``CertificateMismatch`` for a wrong
    pinned fingerprint, ``ConnectTimeout`` after ``connect_timeout`` seconds.
    ``keepalive_interval`` 0 disables keep-alive PINGs (and probes);
    ``probe_interval`` 0 disables the faster PINGs of a busy connection. Raises ``ValueError``
    at once for contradictory or malformed verification options.
    """
    pinned = normalize_fingerprint(fingerprint) if fingerprint else None
    configuration = client_configuration(
        server_name=server_name,
        cafile=cafile,
        cadata=cadata,
        fingerprint=fingerprint,
        verify=verify,
        alpn=alpn,
        idle_timeout=idle_timeout,
        flow_control_window=flow_control_window,
    )

    def start(address: str) -> Deferred[QuicClientConnection]:
        connection = QuicClientConnection(
            reactor,
            configuration,
            (address, port),
            pinned_fingerprint=pinned,
            keepalive_interval=keepalive_interval,
            probe_interval=probe_interval,
            connect_timeout=connect_timeout,
        )
        interface = "::" if abstract.isIPv6Address(address) else "0.0.0.0"
        reactor.listenUDP(0, connection, interface=interface)
        return connection.handshake_completed()

    if abstract.isIPAddress(host) or abstract.isIPv6Address(host):
        return maybeDeferred(start, host)
    resolved: Deferred[str] = reactor.resolve(host)
    return resolved.addCallback(start)


class QuicClientConnection(DatagramProtocol):
    """One client QUIC connection on its own UDP port.

    Built and started by ``connect``. Requests on one connection run
    concurrently, one bidirectional stream each.
    """

    noisy = False
    """Workflows open connections often; Twisted's start/stop lines would drown their logs."""

    def __init__(
        self,
        clock: IReactorTime,
        configuration: QuicConfiguration,
        address: NetworkAddress,
        *,
        pinned_fingerprint: str | None = None,
        keepalive_interval: float = 10.0,
        probe_interval: float = 1.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._clock = clock
        self._quic = QuicConnection(configuration=configuration)
        self._address = address
        self._pinned = pinned_fingerprint
        self._keepalive_interval = keepalive_interval
        self._probe_interval = probe_interval
        self._connect_timeout = connect_timeout
        self._driver: QuicDriver | None = None
        self._handshake: Deferred[QuicClientConnection] = Deferred(self._cancel_handshake)
        self._handshake_error: QuicConnectionError | None = None
        self._connect_timer: IDelayedCall | None = None
        self._keepalive: _KeepAlive | None = None
        self._closing = False
        self._requests: dict[int, tuple[Deferred[bytes], list[bytes]]] = {}
        self._termination: Termination | None = None
        self._observers: list[Deferred[Termination]] = []
        self.alpn_protocol: str | None = None

    @property
    def peer(self) -> NetworkAddress:
        """The server's (host, port)."""
        return self._address

    @property
    def terminated(self) -> bool:
        """True once the QUIC connection has terminated."""
        return self._driver is not None and self._driver.terminated

    def handshake_completed(self) -> Deferred[QuicClientConnection]:
        """The Deferred ``connect`` returns (fires once)."""
        return self._handshake

    def request(self, data: bytes, end_stream: bool = True) -> Deferred[bytes]:
        """Open a bidirectional stream, write ``data`` (then FIN unless told otherwise).

        Fires with every byte the server wrote on the stream once its FIN
        arrived. Fails with ``StreamResetError`` if the server resets the
        stream, ``QuicConnectionError`` if the connection terminates first.
        Cancelling resets the stream and asks the server to stop sending.
        """
        driver = self._driver
        if driver is None or driver.terminated:
            return fail(QuicConnectionError(QuicErrorCode.NO_ERROR, "connection is closed"))
        stream_id = self._quic.get_next_available_stream_id()
        response: Deferred[bytes] = Deferred(lambda _: self._abandon(stream_id))
        self._requests[stream_id] = (response, [])
        self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        driver.transmit_soon()
        if self._keepalive is not None:
            self._keepalive.request_sent()
        return response

    def close(self, error_code: int = 0, reason: str = "") -> Deferred[None]:
        """Application-close the connection; fire once it has terminated.

        The CONNECTION_CLOSE is sent before this returns (or, when called
        while a datagram is being handled, as soon as its events are), so
        the server learns of the close even if the program stops its
        reactor right after. The closing period that follows lasts about
        three probe timeouts (~90 ms on loopback), after which the UDP port
        is released and the returned Deferred fires; nothing depends on
        waiting for it.
        """
        closed = self.when_closed()
        self._closing = True
        if self._driver is not None and not self._driver.terminated:
            self._stop_keepalive()
            self._quic.close(error_code=error_code, reason_phrase=reason)
            self._driver.flush()
        return closed.addCallback(lambda _: None)

    def when_closed(self) -> Deferred[Termination]:
        """Fire with the ``Termination`` once the connection ended and its port is released."""
        if self._termination is not None:
            return succeed(self._termination)
        observer: Deferred[Termination] = Deferred()
        self._observers.append(observer)
        return observer

    # -- DatagramProtocol ------------------------------------------------

    def startProtocol(self) -> None:
        """The UDP port is ready: send the first handshake flight."""
        writer = datagram_writer(self.transport)
        self._driver = QuicDriver(self._clock, self._quic, writer, self._on_event)
        self._connect_timer = self._clock.callLater(self._connect_timeout, self._timed_out)
        self._driver.connect(self._address)

    def datagramReceived(self, datagram: bytes, addr: NetworkAddress) -> None:
        """Feed a datagram from the server to the connection, unless it is a stateless reset."""
        driver = self._driver
        if driver is None or driver.terminated:
            return
        if not self._closing and is_stateless_reset(datagram, _reset_tokens(self._quic)):
            driver.abort()
            self._terminate(
                Termination(
                    error_code=QuicErrorCode.NO_ERROR, reason=STATELESS_RESET, application=False
                )
            )
            return
        driver.datagram_received(datagram, addr)

    # -- events ----------------------------------------------------------

    def _on_event(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self._handshake_done(event)
        elif isinstance(event, StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, StreamReset):
            pending = self._requests.pop(event.stream_id, None)
            if pending is not None:
                pending[0].errback(StreamResetError(event.stream_id, event.error_code))
        elif isinstance(event, PingAcknowledged):
            if self._keepalive is not None:
                self._keepalive.acknowledged(event.uid)
        elif isinstance(event, ConnectionTerminated):
            self._terminate(
                Termination(
                    error_code=event.error_code,
                    reason=event.reason_phrase,
                    application=event.frame_type is None,
                )
            )

    def _handshake_done(self, event: HandshakeCompleted) -> None:
        if self._pinned is not None:
            actual = _presented_fingerprint(self._quic)
            if actual != self._pinned:
                self._handshake_error = CertificateMismatch(self._pinned, actual)
                self._quic.close(
                    error_code=_BAD_CERTIFICATE,
                    frame_type=QuicFrameType.CRYPTO,
                    reason_phrase="certificate fingerprint mismatch",
                )
                return
        self._cancel_connect_timer()
        self.alpn_protocol = event.alpn_protocol
        if self._keepalive_interval > 0:
            self._keepalive = _KeepAlive(
                self._clock,
                self._ping,
                lambda: bool(self._requests),
                self._keepalive_interval,
                self._probe_interval,
            )
        if not self._handshake.called:
            self._handshake.callback(self)

    def _stream_data(self, event: StreamDataReceived) -> None:
        pending = self._requests.get(event.stream_id)
        if pending is None:
            return
        response, chunks = pending
        chunks.append(event.data)
        if event.end_stream:
            del self._requests[event.stream_id]
            response.callback(b"".join(chunks))

    def _ping(self, uid: int) -> None:
        if self._driver is None or self._driver.terminated:
            return
        self._quic.send_ping(uid)
        self._driver.transmit()

    def _timed_out(self) -> None:
        self._connect_timer = None
        if self._driver is None or self._driver.terminated:
            return
        self._handshake_error = ConnectTimeout(self._connect_timeout)
        self._driver.abort()
        self._terminate(
            Termination(
                error_code=QuicErrorCode.INTERNAL_ERROR,
                reason=self._handshake_error.reason,
                application=False,
            )
        )

    def _cancel_handshake(self, _: Deferred[QuicClientConnection]) -> None:
        if self._driver is not None and not self._driver.terminated:
            self._quic.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="connect cancelled")
            self._driver.transmit_soon()

    def _abandon(self, stream_id: int) -> None:
        if self._requests.pop(stream_id, None) is None or self.terminated:
            return
        try:
            self._quic.reset_stream(stream_id, QuicErrorCode.NO_ERROR)
            self._quic.stop_stream(stream_id, QuicErrorCode.NO_ERROR)
        except (ValueError, RuntimeError) as error:
            _log.debug("abandoning stream {stream_id}: {error}", stream_id=stream_id, error=error)
        if self._driver is not None:
            self._driver.transmit_soon()

    def _cancel_connect_timer(self) -> None:
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
        self._keepalive = None

    def _terminate(self, termination: Termination) -> None:
        self._cancel_connect_timer()
        self._stop_keepalive()
        _log.debug(
            "QUIC connection to {peer} terminated: {reason}",
            peer=self._address,
            reason=termination.reason or f"error 0x{termination.error_code:X}",
        )
        released = maybeDeferred(self.transport.stopListening)
        released.addErrback(lambda failure: _log.failure("releasing the UDP port", failure))
        released.addCallback(lambda _: self._finish(termination))

    def _finish(self, termination: Termination) -> None:
        self._termination = termination
        error = QuicConnectionError(
            termination.error_code, termination.reason, application=termination.application
        )
        requests, self._requests = self._requests, {}
        for response, _ in requests.values():
            response.errback(error)
        if not self._handshake.called:
            self._handshake.errback(self._handshake_error or error)
        observers, self._observers = self._observers, []
        for observer in observers:
            observer.callback(termination)


class _KeepAlive:
    """When a connection PINGs the server.

    Every ``interval`` seconds while all is quiet; every ``probe_interval``
    seconds (at most ``interval``; 0 for never) while a request is
    outstanding or the latest PING is not yet acknowledged, so that a server
    that died or restarted is noticed soon (a restarted server answers the
    PING with a stateless reset).
    """

    def __init__(
        self,
        clock: IReactorTime,
        ping: Callable[[int], None],
        outstanding: Callable[[], bool],
        interval: float,
        probe_interval: float,
    ) -> None:
        self._clock = clock
        self._ping = ping
        self._outstanding = outstanding
        self._interval = interval
        self._probe_interval = min(probe_interval, interval)
        self._uid = 0
        self._sent_at = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(interval, self._fire)

    def request_sent(self) -> None:
        """A request went out: PING within ``probe_interval`` unless one is due sooner."""
        call = self._call
        if (
            self._probe_interval > 0
            and call is not None
            and call.getTime() > self._clock.seconds() + self._probe_interval
        ):
            call.reset(self._probe_interval)

    def acknowledged(self, uid: int) -> None:
        """The server acknowledged PING ``uid``: back to the quiet pace when idle."""
        if uid != self._uid:
            return
        if self._call is not None and not self._outstanding():
            quiet_at = self._sent_at + self._interval
            self._call.reset(max(0.0, quiet_at - self._clock.seconds()))

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._uid += 1
        self._sent_at = self._clock.seconds()
        probing = self._probe_interval > 0
        self._call = self._clock.callLater(
            self._probe_interval if probing else self._interval, self._fire
        )
        self._ping(self._uid)


def _reset_tokens(quic: QuicConnection) -> tuple[bytes, ...]:
    """The stateless reset token of the connection id we send to, if the server gave one.

    aioquic 1.x keeps the server's tokens (from its transport parameters and
    NEW_CONNECTION_ID frames) with the peer connection ids, in the private
    ``QuicConnection._peer_cid``, and does not detect stateless resets
    itself; this function is the only place that reads it. RFC 9000 section
    10.3.1 allows checking only tokens of connection ids in use.
    """
    peer_cid: Any = getattr(quic, "_peer_cid", None)
    token = getattr(peer_cid, "stateless_reset_token", None)
    return (token,) if isinstance(token, bytes) and token else ()


def _presented_fingerprint(quic: QuicConnection) -> str | None:
    """The SHA-256 fingerprint of the certificate the server presented, if any.

    aioquic has no public accessor for the peer certificate. It keeps the
    parsed leaf on the TLS context as the private attribute
    ``QuicConnection.tls._peer_certificate`` (aioquic 1.x); this function is
    the only place that reads it. ``None`` (fail closed) if it is missing.
    """
    tls_context: Any = getattr(quic, "tls", None)
    certificate = getattr(tls_context, "_peer_certificate", None)
    if not isinstance(certificate, x509.Certificate):
        return None
    return fingerprint_of(certificate)
