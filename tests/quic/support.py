"""Test doubles for the QUIC transport (imported as ``tests.quic.support``).

``MemoryNetwork`` carries datagrams between in-memory UDP ports; nothing
moves until ``settle`` or ``run`` is called, and time is a ``task.Clock``.
``MemoryReactor`` lets ``runtara.quic.client.connect`` bind such ports.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicProtocolVersion
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from runtara.interfaces import IConnectionHandler, IQuicChannel

SERVER_ADDRESS = ("127.0.0.1", 4433)


@dataclass
class Datagram:
    source: tuple[str, int]
    destination: tuple[str, int]
    data: bytes


class MemoryPort:
    """An in-memory UDP port: ``write`` queues on the network, ``stopListening`` unbinds."""

    def __init__(self, network: MemoryNetwork, protocol: DatagramProtocol, address) -> None:
        self.network = network
        self.protocol = protocol
        self.address = address
        self.failing_writes = 0
        self.listening = True

    def write(self, packet: bytes, addr) -> None:
        if self.failing_writes > 0:
            self.failing_writes -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        self.network.queue.append(Datagram(self.address, tuple(addr[:2]), packet))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.address)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            self.network.ports.pop(self.address[1], None)
            self.protocol.doStop()


@dataclass
class MemoryNetwork:
    """Datagrams between in-memory ports, routed by port number."""

    clock: Clock
    ports: dict[int, MemoryPort] = field(default_factory=dict)
    queue: list[Datagram] = field(default_factory=list)
    delivered: list[Datagram] = field(default_factory=list)
    drop: Callable[[Datagram], bool] = lambda datagram: False
    _port_numbers: itertools.count = field(default_factory=lambda: itertools.count(50000))

    def listen(self, protocol: DatagramProtocol, host: str = "127.0.0.1", port: int = 0):
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        number = port or next(self._port_numbers)
        bound = self.ports[number] = MemoryPort(self, protocol, (host, number))
        protocol.makeConnection(bound)
        return bound

    def deliver(self) -> int:
        """Deliver every queued datagram (and those sent in reply); return how many."""
        count = 0
        while self.queue:
            datagram = self.queue.pop(0)
            port = self.ports.get(datagram.destination[1])
            if port is None or self.drop(datagram):
                continue
            self.delivered.append(datagram)
            port.protocol.datagramReceived(datagram.data, datagram.source)
            count += 1
        return count

    def settle(self) -> None:
        """Deliver datagrams and run calls due now until nothing moves."""
        for _ in range(10_000):
            self.clock.advance(0)
            due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            if not self.deliver() and not due:
                return
        raise AssertionError("the network never settled")

    def run(self, seconds: float, step: float = 0.005) -> None:
        """Let ``seconds`` pass on the clock in small steps, settling after each."""
        self.settle()
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.settle()


class MemoryReactor(Clock):
    """A ``task.Clock`` whose ``listenUDP`` binds ports of a ``MemoryNetwork``
    and whose ``resolve`` knows ``localhost``."""

    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryNetwork(self)
        self.interfaces: list[str] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.interfaces.append(interface)
        return self.network.listen(protocol, interface, port)

    def resolve(self, name: str) -> Deferred[str]:
        if name == "localhost":
            return succeed("127.0.0.1")
        return fail(DNSLookupError(name))


@implementer(IConnectionHandler)
class EchoHandler:
    """Echoes each stream with FIN once the client's FIN arrived; records the rest.

    With ``delay`` set, the echo is sent from a ``callLater`` (as a Deferred
    callback of the RPC layer would), outside event processing.
    """

    def __init__(self, channel: IQuicChannel, clock: Clock | None = None, delay: float = 0):
        self.channel = channel
        self.clock = clock
        self.delay = delay
        self.received: dict[int, bytearray] = {}
        self.finished: list[int] = []
        self.resets: list[int] = []
        self.lost: list[str] = []

    def stream_data_received(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.received.setdefault(stream_id, bytearray()).extend(data)
        if end_stream:
            self.finished.append(stream_id)
            reply = bytes(self.received[stream_id])
            if self.clock is None:
                self.channel.send_stream_data(stream_id, reply, True)
            else:
                self.clock.callLater(
                    self.delay, self.channel.send_stream_data, stream_id, reply, True
                )

    def stream_reset(self, stream_id: int) -> None:
        self.resets.append(stream_id)

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


class HandlerFactory:
    """A ``handler_factory`` that builds ``EchoHandler``s and keeps them."""

    def __init__(self, clock: Clock | None = None, delay: float = 0) -> None:
        self.clock = clock
        self.delay = delay
        self.handlers: list[EchoHandler] = []

    def __call__(self, channel: IQuicChannel) -> EchoHandler:
        handler = EchoHandler(channel, self.clock, self.delay)
        self.handlers.append(handler)
        return handler


def outcome(deferred: Deferred, network: MemoryNetwork, seconds: float = 1.0):
    """Run the network until ``deferred`` fires (at most ``seconds``); return its
    result, or the ``Failure`` it failed with."""
    results: list = []
    deferred.addBoth(results.append)
    network.settle()
    end = network.clock.seconds() + seconds
    while not results and network.clock.seconds() < end:
        network.run(0.005)
    assert results, f"the Deferred did not fire within {seconds} s"
    return results[0]


def succeeded(deferred: Deferred, network: MemoryNetwork, seconds: float = 1.0):
    """Like ``outcome``, but raise the failure if the Deferred failed."""
    result = outcome(deferred, network, seconds)
    if isinstance(result, Failure):
        result.raiseException()
    return result


def long_header_packet(
    size: int,
    *,
    version: int = QuicProtocolVersion.VERSION_1,
    first_byte: int = 0xC3,
    destination_cid: bytes = b"\x11" * 8,
    source_cid: bytes = b"\x22" * 8,
) -> bytes:
    """A parseable long-header packet (an Initial by default) of exactly ``size``
    bytes whose payload is random (so it never decrypts)."""
    buf = Buffer(capacity=size)
    buf.push_uint8(first_byte)
    buf.push_uint32(version)
    buf.push_uint8(len(destination_cid))
    buf.push_bytes(destination_cid)
    buf.push_uint8(len(source_cid))
    buf.push_bytes(source_cid)
    buf.push_uint_var(0)
    remaining = size - buf.tell() - 2
    buf.push_uint16(0x4000 | remaining)
    buf.push_bytes(os.urandom(remaining))
    return buf.data
