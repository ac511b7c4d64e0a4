"""Drive one sans-IO aioquic ``QuicConnection`` from Twisted.

The loop is the one aioquic documents: feed a datagram or a timer to the
connection, drain its events, write the datagrams it wants to send, and arm
one timer for ``get_timer()``. Time comes from the injected ``IReactorTime``
for both aioquic's ``now`` and ``callLater``, so ``task.Clock`` drives it all
in tests.

Two things keep the CPU per call down (docs/benchmarks.md, "CPU per call"):
a pending acknowledgement rides in the packet that carries our next data
instead of a packet of its own (``_acknowledge_now``), and datagrams go
straight to the socket's ``sendto`` (``datagram_writer``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from aioquic import tls
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["DatagramWriter", "QuicDriver", "datagram_writer", "describe_termination"]

_log = Logger()


def describe_termination(event: ConnectionTerminated) -> str:
    """A short text for a ``ConnectionTerminated``: who closed, the code and the reason."""
    kind = "application" if event.frame_type is None else "transport"
    text = f"{kind} close 0x{event.error_code:X}"
    if event.reason_phrase:
        text += f": {event.reason_phrase}"
    return text


class DatagramWriter(Protocol):
    """What the driver needs of a UDP transport (``IUDPTransport.write``)."""

    def write(self, packet: bytes, addr: Any) -> Any:
        """Send one datagram to ``addr``."""


class _SocketWriter:
    """A ``DatagramWriter`` that is the socket's own ``sendto``."""

    __slots__ = ("write",)

    def __init__(self, udp_socket: socket.socket) -> None:
        self.write = udp_socket.sendto


def datagram_writer(transport: Any) -> DatagramWriter:
    """The cheapest way to send datagrams on ``transport``.

    For a Twisted UDP port that is its socket's ``sendto``: ``udp.Port.write``
    checks that the address is an IP address of the port's family on every
    call, about half the cost of a loopback send, and our addresses always
    come from the socket itself. Send errors are ``OSError`` either way
    (the driver drops the datagram; QUIC retransmits). Any other transport
    (an in-memory one in tests) is used as it is.
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if isinstance(handle, socket.socket):
        return _SocketWriter(handle)
    writer: DatagramWriter = transport
    return writer


_OVERDUE = 0.001
"""How far in the past ``_acknowledge_now`` puts an acknowledgement's deadline."""


def _acknowledge_now(connection: QuicConnection, now: float) -> None:
    """Make the connection's pending 1-RTT acknowledgement overdue.

    aioquic delays an ACK until 1 ms after the packet that asked for it and
    then sends it in a packet of its own, even when data left for the peer
    meanwhile. Called just before data goes out, this lets the ACK ride in
    that packet: a sequential call then costs one datagram each way instead
    of two (RFC 9000 section 13.2.1 allows acknowledging earlier at any
    time). The deadline goes slightly into the past, not to ``now``: aioquic
    writes an overdue ACK at once, as it does when its own ACK timer fires,
    whereas one due exactly now waits for the pacer. aioquic has no public
    way to ask for this; its packet spaces are the private
    ``QuicConnection._spaces`` (aioquic 1.x), read only here and skipped if
    missing. The wire is unaffected but for the timing: the ACK frame's
    delay field is computed from when the packet arrived.
    """
    spaces = getattr(connection, "_spaces", None)
    space = spaces.get(tls.Epoch.ONE_RTT) if isinstance(spaces, dict) else None
    if space is not None and space.ack_at is not None and space.ack_at > now:
        space.ack_at = now - _OVERDUE


class QuicDriver:
    """Runs one ``QuicConnection``: datagrams in, events out, datagrams and timer kept.

    ``handle_event`` is called for every event, in order, including the
    final ``ConnectionTerminated``; after that the driver is inert. An
    exception from ``handle_event`` is logged and does not stop the loop.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connection: QuicConnection,
        transport: DatagramWriter,
        handle_event: Callable[[QuicEvent], object],
    ) -> None:
        self._clock = clock
        self._connection = connection
        self._transport = transport
        self._handle_event = handle_event
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._soon: IDelayedCall | None = None
        self._data_queued = False
        self._processing = False
        self._terminated = False

    @property
    def connection(self) -> QuicConnection:
        """The driven aioquic connection."""
        return self._connection

    @property
    def terminated(self) -> bool:
        """True once ``ConnectionTerminated`` was handled or ``abort`` was called."""
        return self._terminated

    def now(self) -> float:
        """The current time on the driver's clock, as given to aioquic."""
        return self._clock.seconds()

    def connect(self, addr: NetworkAddress) -> None:
        """Start a client handshake towards ``addr`` and send the first flight."""
        self._connection.connect(addr, now=self.now())
        self.transmit()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """Feed one received datagram, then handle events and transmit."""
        if self._terminated:
            return
        try:
            self._connection.receive_datagram(data, addr, now=self.now())
        finally:
            self._process()

    def transmit(self) -> None:
        """Write every datagram the connection has ready and re-arm the timer.

        After ``transmit_soon``, a pending acknowledgement goes out with the
        queued data rather than in a packet of its own. Events that building
        the packets raised are handled before they leave: aioquic announces
        a connection id (``ConnectionIdIssued``) as it writes it into a
        packet, and the server must route that id before the peer can use it.
        """
        if self._soon is not None:
            if self._soon.active():
                self._soon.cancel()
            self._soon = None
        if self._terminated:
            return
        now = self.now()
        if self._data_queued:
            self._data_queued = False
            _acknowledge_now(self._connection, now)
        datagrams = self._connection.datagrams_to_send(now=now)
        processing, self._processing = self._processing, True
        try:
            self._dispatch_pending()
        finally:
            self._processing = processing
        for data, addr in datagrams:
            self._write(data, addr)
        if self._terminated:
            return
        self._arm_timer(now)
        if self._data_queued:
            self.transmit_soon()

    def transmit_soon(self) -> None:
        """Say that data was queued: transmit it on the next reactor turn.

        Calls made meanwhile share that turn. For data queued from outside
        event processing (Deferred callbacks); during event processing
        nothing is scheduled, the loop transmits when it has drained the
        events.
        """
        if self._terminated:
            return
        self._data_queued = True
        if self._processing or self._soon is not None:
            return
        self._soon = self._clock.callLater(0, self.transmit)

    def flush(self) -> None:
        """Transmit what was queued now rather than on the next reactor turn.

        For a close that must be on the wire before the program moves on
        (and perhaps stops the reactor). During event processing the loop
        transmits when it has drained the events, before control returns.
        """
        if self._terminated:
            return
        self._data_queued = True
        if not self._processing:
            self.transmit()

    def abort(self) -> None:
        """Stop driving without a closing handshake: cancel timers, ignore the rest."""
        self._terminated = True
        self._cancel_calls()

    def _process(self) -> None:
        self._processing = True
        try:
            self._dispatch_pending()
        finally:
            self._processing = False
        self.transmit()

    def _dispatch_pending(self) -> None:
        while (event := self._connection.next_event()) is not None:
            if isinstance(event, ConnectionTerminated):
                self.abort()
            self._dispatch(event)

    def _dispatch(self, event: QuicEvent) -> None:
        try:
            self._handle_event(event)
        except Exception:
            _log.failure("handling the QUIC event {event!r} failed", event=event)

    def _write(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self._transport.write(data, addr)
        except (OSError, MessageLengthError) as error:
            _log.debug(
                "dropped a {size}-byte datagram to {address}: {error}",
                size=len(data),
                address=addr,
                error=error,
            )

    def _arm_timer(self, now: float) -> None:
        """Keep one call armed for ``get_timer()``.

        The deadline moves on almost every packet. A later one only moves
        the armed call (``reset``, cheap: the reactor re-sorts it lazily); an
        earlier one, or none, replaces or cancels it.
        """
        timer_at = self._connection.get_timer()
        previous, self._timer_at = self._timer_at, timer_at
        timer = self._timer
        if timer is not None:
            if timer_at == previous:
                return
            if timer_at is not None and previous is not None and timer_at > previous:
                timer.reset(max(0.0, timer_at - now))
                return
            timer.cancel()
            self._timer = None
        if timer_at is not None:
            self._timer = self._clock.callLater(max(0.0, timer_at - now), self._on_timer)

    def _on_timer(self) -> None:
        timer_at = self._timer_at
        self._timer = None
        self._timer_at = None
        now = self.now()
        self._connection.handle_timer(now=now if timer_at is None else max(timer_at, now))
        self._process()

    def _cancel_calls(self) -> None:
        for call in (self._timer, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._timer = None
        self._timer_at = None
        self._soon = None
