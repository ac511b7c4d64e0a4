"""The QUIC server: one UDP port, many aioquic connections, one handler each.

``QuicServerProtocol`` demultiplexes datagrams by destination connection id
(the client's original one plus every id the connection issued), answers
unsupported versions with Version Negotiation, and creates a connection for
each full-size Initial. Once a connection's handshake completes (ALPN
``runtara/1`` is enforced by aioquic during the handshake), the RPC layer's
``IConnectionHandler`` is created for it and sees the connection through an
``IQuicChannel``.
"""

from __future__ import annotations

from collections.abc import Callable

from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from runtara.interfaces import IConnectionHandler, IQuicChannel
from runtara.quic._driver import DatagramWriter, QuicDriver, datagram_writer, describe_termination
from runtara.quic._server_connection import ServerQuicConnection
from runtara.quic.reset import StatelessResetter

__all__ = [
    "ALPN",
    "CONNECTION_RECEIVE_WINDOW",
    "DEFAULT_FLOW_CONTROL_WINDOW",
    "QuicServerProtocol",
    "server_configuration",
]

ALPN = "runtara/1"
"""The one application protocol a runtara server speaks (PROTOCOL.md section 1)."""

DEFAULT_FLOW_CONTROL_WINDOW = 16 * 1024 * 1024
"""A client's initial receive windows (aioquic doubles them as data arrives), and the
server's default stream credit."""

CONNECTION_RECEIVE_WINDOW = 4 * 1024 * 1024
"""Bytes a client may send on one connection beyond what the server has taken in."""

_log = Logger()


def server_configuration(
    certificate: x509.Certificate,
    private_key: CertificateIssuerPrivateKeyTypes,
    *,
    certificate_chain: tuple[x509.Certificate, ...] = (),
    idle_timeout: float = 120.0,
    max_datagram_size: int = SMALLEST_MAX_DATAGRAM_SIZE,
    stream_window: int = DEFAULT_FLOW_CONTROL_WINDOW,
    connection_window: int = CONNECTION_RECEIVE_WINDOW,
) -> QuicConfiguration:
    """Return a server ``QuicConfiguration`` that accepts only ALPN ``runtara/1``.

    ``stream_window`` is what a client may send on one stream, ever: the
    server never raises it, so make it the largest request frame.
    ``connection_window`` is what a client may send on one connection beyond
    the bytes the server has taken in; the server raises the connection's
    credit as it takes data in, never further.
    """
    return QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        certificate=certificate,
        certificate_chain=list(certificate_chain),
        private_key=private_key,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_data=connection_window,
        max_stream_data=stream_window,
    )


def _is_client_bidirectional(stream_id: int) -> bool:
    return stream_id & 0x3 == 0


@implementer(IQuicChannel)
class _ServerConnection:
    """One server-side QUIC connection: its driver, its handler, its connection ids.

    Provides ``IQuicChannel`` to the handler.
    """

    def __init__(
        self,
        server: QuicServerProtocol,
        quic: QuicConnection,
        original_destination_cid: bytes,
    ) -> None:
        self._server = server
        self._driver = QuicDriver(server.clock, quic, server.writer, self._on_event)
        self._handler: IConnectionHandler | None = None
        self._early_events: list[QuicEvent] = []
        self._observers: list[Deferred[None]] = []
        self._lost = False
        self.connection_ids: set[bytes] = {original_destination_cid, quic.host_cid}

    # -- IQuicChannel ----------------------------------------------------

    @property
    def peer(self) -> NetworkAddress | None:
        """The peer's current (host, port) address."""
        return self._driver.connection.get_peer_address()

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue ``data`` on the stream; ``end_stream`` sends FIN."""
        self._stream_call(
            "send", stream_id, lambda q: q.send_stream_data(stream_id, data, end_stream)
        )

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Send STOP_SENDING for the stream."""
        self._stream_call("stop", stream_id, lambda q: q.stop_stream(stream_id, error_code))

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Send RESET_STREAM for our side of the stream."""
        self._stream_call("reset", stream_id, lambda q: q.reset_stream(stream_id, error_code))

    def close(self, error_code: int, reason: str) -> None:
        """Close the connection with an application close.

        Before the handshake is confirmed, aioquic sends it as a transport
        close with APPLICATION_ERROR (0xC) and no reason, as RFC 9000
        section 10.2.3 requires.
        """
        if self._driver.terminated:
            return
        self._driver.connection.close(error_code=error_code, reason_phrase=reason)
        self._driver.transmit_soon()

    # -- used by the server ----------------------------------------------

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """Feed one datagram routed to this connection."""
        self._driver.datagram_received(data, addr)

    def when_terminated(self) -> Deferred[None]:
        """A Deferred that fires with None once the connection has terminated."""
        observer: Deferred[None] = Deferred()
        if self._lost:
            observer.callback(None)
        else:
            self._observers.append(observer)
        return observer

    def abort(self, reason: str) -> None:
        """Drop the connection at once, without telling the peer."""
        if self._lost:
            return
        self._driver.abort()
        self._lose(reason)

    def _stream_call(
        self, action: str, stream_id: int, call: Callable[[QuicConnection], None]
    ) -> None:
        if self._driver.terminated:
            return
        try:
            call(self._driver.connection)
        except (ValueError, RuntimeError) as error:
            _log.debug(
                "ignored {action} on stream {stream_id} from {peer}: {error}",
                action=action,
                stream_id=stream_id,
                peer=self.peer,
                error=error,
            )
            return
        self._driver.transmit_soon()

    def _on_event(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived | StreamReset):
            self._deliver(event)
        elif isinstance(event, ConnectionIdIssued):
            self.connection_ids.add(event.connection_id)
            self._server._route(event.connection_id, self)
        elif isinstance(event, ConnectionIdRetired):
            self.connection_ids.discard(event.connection_id)
            self._server._unroute(event.connection_id)
        elif isinstance(event, HandshakeCompleted):
            self._start_handler(event)
        elif isinstance(event, ConnectionTerminated):
            self._lose(describe_termination(event))

    def _start_handler(self, event: HandshakeCompleted) -> None:
        _log.debug(
            "QUIC connection from {peer} established (ALPN {alpn})",
            peer=self.peer,
            alpn=event.alpn_protocol,
        )
        try:
            self._handler = self._server.handler_factory(self)
        except Exception:
            _log.failure("creating the connection handler for {peer} failed", peer=self.peer)
            self._driver.connection.close(
                error_code=QuicErrorCode.INTERNAL_ERROR,
                frame_type=QuicFrameType.PADDING,
                reason_phrase="connection handler failed",
            )
            return
        early, self._early_events = self._early_events, []
        for early_event in early:
            self._deliver(early_event)

    def _deliver(self, event: StreamDataReceived | StreamReset) -> None:
        if not _is_client_bidirectional(event.stream_id):
            return
        if self._handler is None:
            self._early_events.append(event)
        elif isinstance(event, StreamDataReceived):
            self._handler.stream_data_received(event.stream_id, event.data, event.end_stream)
        else:
            self._handler.stream_reset(event.stream_id)

    def _lose(self, reason: str) -> None:
        self._lost = True
        self._early_events = []
        self._server._forget(self)
        _log.debug(
            "QUIC connection from {peer} terminated: {reason}", peer=self.peer, reason=reason
        )
        handler, self._handler = self._handler, None
        if handler is not None:
            try:
                handler.connection_lost(reason)
            except Exception:
                _log.failure("connection_lost failed for {peer}", peer=self.peer)
        observers, self._observers = self._observers, []
        for observer in observers:
            observer.callback(None)


class QuicServerProtocol(DatagramProtocol):
    """A runtara QUIC server on one UDP port (``reactor.listenUDP(port, protocol)``).

    ``handler_factory(channel)`` is called once per connection, when its
    handshake has completed. No datagram, however malformed, escapes as an
    exception: unparseable packets and short Initials are dropped.

    With a ``resetter``, every connection id the server issues carries the
    resetter's token, and a short-header packet for an unknown connection id
    is answered with a stateless reset (``runtara.quic.reset``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        configuration: QuicConfiguration,
        handler_factory: Callable[[IQuicChannel], IConnectionHandler],
        resetter: StatelessResetter | None = None,
    ) -> None:
        if configuration.is_client:
            raise ValueError("a server needs a configuration with is_client=False")
        self.clock = clock
        self.configuration = configuration
        self.handler_factory = handler_factory
        self._resetter = resetter
        self._writer: DatagramWriter | None = None
        self._routes: dict[bytes, _ServerConnection] = {}
        self._connections: set[_ServerConnection] = set()

    @property
    def connection_count(self) -> int:
        """How many connections are alive (handshaking, open or closing)."""
        return len(self._connections)

    @property
    def writer(self) -> DatagramWriter:
        """How connections send datagrams: the port's socket (``datagram_writer``)."""
        if self._writer is None:
            self._writer = datagram_writer(self.transport)
        return self._writer

    @property
    def routed_connection_ids(self) -> int:
        """How many connection ids route datagrams to a live connection."""
        return len(self._routes)

    def close_all(
        self, error_code: int = 0, reason: str = "", timeout: float = 2.0
    ) -> Deferred[None]:
        """Application-close every connection; fire once all have terminated.

        A closing connection terminates after about three probe timeouts
        (~90 ms on loopback). Any still alive after ``timeout`` seconds on
        the clock are dropped then, so this never hangs.
        """
        connections = list(self._connections)
        finished = gatherResults([connection.when_terminated() for connection in connections])
        for connection in connections:
            connection.close(error_code, reason)
        expiry = self.clock.callLater(timeout, self._abort_all, "close timed out")

        def done(_: object) -> None:
            if expiry.active():
                expiry.cancel()

        return finished.addCallback(done)

    def stopProtocol(self) -> None:
        """The port stopped listening: drop every connection still alive."""
        self._abort_all("server stopped")

    def datagramReceived(self, datagram: bytes, addr: NetworkAddress) -> None:
        """Route one datagram to its connection; never raises."""
        try:
            self._receive(datagram, addr)
        except Exception:
            _log.failure(
                "failed on a {size}-byte datagram from {peer}", size=len(datagram), peer=addr
            )

    def _route(self, connection_id: bytes, connection: _ServerConnection) -> None:
        """Deliver datagrams addressed to ``connection_id`` to ``connection``."""
        self._routes[connection_id] = connection

    def _unroute(self, connection_id: bytes) -> None:
        """Stop routing ``connection_id``."""
        self._routes.pop(connection_id, None)

    def _forget(self, connection: _ServerConnection) -> None:
        """Remove a terminated connection and every route to it."""
        self._connections.discard(connection)
        for connection_id in connection.connection_ids:
            if self._routes.get(connection_id) is connection:
                del self._routes[connection_id]
        connection.connection_ids.clear()

    def _receive(self, datagram: bytes, addr: NetworkAddress) -> None:
        if datagram and not datagram[0] & 0x80:
            # A short header (every packet after the handshake): the destination
            # connection id follows the first byte; no need to parse the rest.
            cid_length = self.configuration.connection_id_length
            connection = self._routes.get(datagram[1 : 1 + cid_length])
            if connection is not None:
                connection.datagram_received(datagram, addr)
                return
        try:
            header = pull_quic_header(
                Buffer(data=datagram), host_cid_length=self.configuration.connection_id_length
            )
        except ValueError:
            _log.debug("dropped an unparseable datagram from {peer}", peer=addr)
            return

        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.configuration.supported_versions
        ):
            self._negotiate_version(datagram, header.destination_cid, header.source_cid, addr)
            return

        connection = self._routes.get(header.destination_cid)
        if connection is None:
            if header.packet_type == QuicPacketType.ONE_RTT:
                self._reset(len(datagram), header.destination_cid, addr)
                return
            if (
                header.packet_type != QuicPacketType.INITIAL
                or len(datagram) < SMALLEST_MAX_DATAGRAM_SIZE
            ):
                _log.debug(
                    "dropped a {size}-byte datagram from {peer} for no connection",
                    size=len(datagram),
                    peer=addr,
                )
                return
            connection = self._accept(header.destination_cid)
        connection.datagram_received(datagram, addr)

    def _accept(self, original_destination_cid: bytes) -> _ServerConnection:
        quic = ServerQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_destination_cid,
            reset_token=None if self._resetter is None else self._resetter.token,
        )
        connection = _ServerConnection(self, quic, original_destination_cid)
        self._connections.add(connection)
        for connection_id in connection.connection_ids:
            self._route(connection_id, connection)
        return connection

    def _reset(self, size: int, destination_cid: bytes, addr: NetworkAddress) -> None:
        """Answer a short-header packet for a connection we do not know (anymore)."""
        packet = None if self._resetter is None else self._resetter.reset_for(size, destination_cid)
        if packet is None:
            _log.debug(
                "dropped a {size}-byte packet from {peer} for no connection", size=size, peer=addr
            )
            return
        _log.debug("sent a stateless reset to {peer}", peer=addr)
        try:
            self.transport.write(packet, addr)
        except OSError as error:
            _log.debug(
                "could not send a stateless reset to {peer}: {error}", peer=addr, error=error
            )

    def _negotiate_version(
        self, datagram: bytes, destination_cid: bytes, source_cid: bytes, addr: NetworkAddress
    ) -> None:
        if len(datagram) < SMALLEST_MAX_DATAGRAM_SIZE:
            _log.debug("dropped a short packet of an unsupported version from {peer}", peer=addr)
            return
        packet = encode_quic_version_negotiation(
            source_cid=destination_cid,
            destination_cid=source_cid,
            supported_versions=self.configuration.supported_versions,
        )
        try:
            self.transport.write(packet, addr)
        except OSError as error:
            _log.debug(
                "could not send version negotiation to {peer}: {error}", peer=addr, error=error
            )

    def _abort_all(self, reason: str) -> None:
        for connection in list(self._connections):
            connection.abort(reason)
