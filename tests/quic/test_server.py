"""QuicServerProtocol over an in-memory network, driven by a task.Clock."""

from __future__ import annotations

import os

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import CancelledError
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from runtara.interfaces import IConnectionHandler, IQuicChannel
from runtara.quic.client import QuicConnectionError, StreamResetError, connect
from runtara.quic.server import ALPN, QuicServerProtocol, server_configuration
from tests.quic.support import (
    SERVER_ADDRESS,
    EchoHandler,
    HandlerFactory,
    long_header_packet,
    outcome,
    succeeded,
)

CLIENT = ("127.0.0.1", 40000)


def open_client(reactor, certificate, **options):
    """Connect a ``QuicClientConnection`` through the memory network."""
    options.setdefault("cadata", certificate.certificate.public_bytes(Encoding.PEM))
    return succeeded(connect(reactor, *SERVER_ADDRESS, **options), reactor.network)


def replies_to(network, address):
    return [d for d in network.queue if d.destination == address]


class Sink:
    """A bound port that only collects what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def datagramReceived(self, data, addr) -> None:
        self.received.append(data)

    def doStop(self) -> None:
        pass


@pytest.fixture
def sink(network):
    sink = Sink()
    network.listen(sink, *CLIENT)
    return sink


def send_raw(network, data: bytes) -> None:
    network.ports[SERVER_ADDRESS[1]].protocol.datagramReceived(data, CLIENT)


# -- handshake and streams -------------------------------------------------


def test_handshake_creates_one_handler_and_echoes(reactor, network, server, certificate):
    client = open_client(reactor, certificate)

    assert client.alpn_protocol == ALPN
    assert server.protocol.connection_count == 1
    [handler] = server.handlers.handlers
    verifyObject(IQuicChannel, handler.channel)
    verifyObject(IConnectionHandler, handler)
    assert handler.channel.peer[0] == "127.0.0.1"

    assert succeeded(client.request(b"x"), network) == b"x"
    assert succeeded(client.request(b""), network) == b""
    assert len(server.handlers.handlers) == 1


def test_replies_sent_from_callbacks_outside_event_processing(reactor, network, certificate):
    handlers = HandlerFactory(clock=reactor, delay=0.05)
    protocol = QuicServerProtocol(
        reactor, server_configuration(certificate.certificate, certificate.private_key), handlers
    )
    network.listen(protocol, *SERVER_ADDRESS)
    client = open_client(reactor, certificate)

    answers = [client.request(bytes([n]) * (n + 1)) for n in range(20)]
    for n, answer in enumerate(answers):
        assert succeeded(answer, network) == bytes([n]) * (n + 1)


def test_a_large_message_flows(reactor, network, server, certificate):
    client = open_client(reactor, certificate)
    payload = os.urandom(3 * 1024 * 1024)

    assert succeeded(client.request(payload), network, seconds=30) == payload


def test_stream_data_arrives_in_order_without_fin(reactor, network, server, certificate):
    client = open_client(reactor, certificate)
    client.request(b"header", end_stream=False)
    network.run(0.05)

    [handler] = server.handlers.handlers
    assert handler.received == {0: bytearray(b"header")}
    assert handler.finished == []


def test_a_cancelled_request_is_a_stream_reset_for_the_handler(
    reactor, network, server, certificate
):
    client = open_client(reactor, certificate)
    pending = client.request(b"partial", end_stream=False)
    network.run(0.05)

    pending.cancel()
    network.run(0.05)

    assert outcome(pending, network).check(CancelledError)
    [handler] = server.handlers.handlers
    assert handler.resets == [0]


def test_channel_reset_and_stop_reach_the_client(reactor, network, server, certificate):
    client = open_client(reactor, certificate)
    pending = client.request(b"partial", end_stream=False)
    network.run(0.05)
    [handler] = server.handlers.handlers

    handler.channel.stop_stream(0, 7)
    handler.channel.reset_stream(0, 9)

    failure = outcome(pending, network)
    assert failure.check(StreamResetError)
    assert failure.value.error_code == 9


def test_channel_calls_on_bad_streams_are_ignored(reactor, network, server, certificate):
    client = open_client(reactor, certificate)
    [handler] = server.handlers.handlers

    handler.channel.stop_stream(400, 1)
    handler.channel.send_stream_data(3, b"no", True)
    assert succeeded(client.request(b"still fine"), network) == b"still fine"
    handler.channel.send_stream_data(0, b"after fin", True)
    network.run(0.05)


# -- termination ------------------------------------------------------------


def test_client_close_cleans_every_connection_id(reactor, network, server, certificate):
    client = open_client(reactor, certificate)
    network.run(0.1)
    assert server.protocol.routed_connection_ids == 1 + 8, "original DCID + 8 issued ids"

    succeeded(client.close(3, "done"), network)
    network.run(1.0)

    [handler] = server.handlers.handlers
    assert handler.lost == ["application close 0x3: done"]
    assert server.protocol.connection_count == 0
    assert server.protocol.routed_connection_ids == 0
    assert reactor.getDelayedCalls() == []


def test_application_close_from_the_channel(reactor, network, server, certificate):
    client = open_client(reactor, certificate)
    [handler] = server.handlers.handlers

    handler.channel.close(0x10, "go away")
    termination = succeeded(client.when_closed(), network)

    assert termination.error_code == 0x10
    assert termination.reason == "go away"
    assert termination.application
    network.run(1.0)
    assert handler.lost == ["application close 0x10: go away"]
    assert server.protocol.connection_count == 0

    handler.channel.send_stream_data(0, b"late", True)
    handler.channel.reset_stream(0, 1)
    handler.channel.stop_stream(0, 1)
    handler.channel.close(0, "again")
    network.run(0.1)
    assert handler.lost == ["application close 0x10: go away"]


def test_idle_connections_time_out(reactor, network, certificate):
    handlers = HandlerFactory()
    configuration = server_configuration(
        certificate.certificate, certificate.private_key, idle_timeout=2.0
    )
    protocol = QuicServerProtocol(reactor, configuration, handlers)
    network.listen(protocol, *SERVER_ADDRESS)
    client = open_client(reactor, certificate, keepalive_interval=0)

    network.run(3.0)

    assert client.terminated
    assert protocol.connection_count == 0
    assert protocol.routed_connection_ids == 0
    assert handlers.handlers[0].lost == ["transport close 0x1: Idle timeout"]


def test_close_all_fires_once_every_connection_terminated(reactor, network, server, certificate):
    clients = [open_client(reactor, certificate) for _ in range(3)]
    closed = [client.when_closed() for client in clients]

    succeeded(server.protocol.close_all(0x20, "shutting down"), network)

    assert server.protocol.connection_count == 0
    for client_closed in closed:
        termination = succeeded(client_closed, network)
        assert (termination.error_code, termination.reason) == (0x20, "shutting down")
    assert all(
        h.lost == ["application close 0x20: shutting down"] for h in server.handlers.handlers
    )


def test_close_all_with_no_connection_fires_at_once(reactor, server):
    fired = []
    server.protocol.close_all(0, "").addCallback(fired.append)
    assert fired == [None]
    assert reactor.getDelayedCalls() == []


def test_close_all_gives_up_after_its_timeout(reactor, network, server, certificate):
    open_client(reactor, certificate, keepalive_interval=0)
    network.drop = lambda datagram: True
    started = reactor.seconds()

    closing = server.protocol.close_all(1, "bye", timeout=0.01)
    result = outcome(closing, network, seconds=3.0)

    assert result is None
    assert reactor.seconds() - started == pytest.approx(0.01, abs=0.006)
    assert server.protocol.connection_count == 0
    assert server.handlers.handlers[0].lost == ["close timed out"]


def test_stopping_the_port_drops_connections(reactor, network, server, certificate):
    open_client(reactor, certificate, keepalive_interval=0)
    drivers = [connection._driver for connection in server.protocol._connections]

    server.port.stopListening()

    assert server.protocol.connection_count == 0
    assert server.protocol.routed_connection_ids == 0
    assert server.handlers.handlers[0].lost == ["server stopped"]
    assert all(driver.terminated for driver in drivers)
    assert not [
        c for c in reactor.getDelayedCalls() if getattr(c.func, "__self__", None) in drivers
    ]


# -- ALPN --------------------------------------------------------------------


@pytest.mark.parametrize("alpn", [None, "h3", "runtara/2"])
def test_a_client_without_runtara_alpn_is_refused(reactor, network, server, certificate, alpn):
    attempt = connect(
        reactor,
        *SERVER_ADDRESS,
        alpn=alpn,
        cadata=certificate.certificate.public_bytes(Encoding.PEM),
    )
    failure = outcome(attempt, network, seconds=2.0)

    assert failure.check(QuicConnectionError)
    assert failure.value.error_code == 0x100 + 120, "CRYPTO_ERROR + no_application_protocol"
    assert server.handlers.handlers == []
    network.run(2.0)
    assert server.protocol.connection_count == 0
    assert server.protocol.routed_connection_ids == 0


# -- handlers that fail -----------------------------------------------------------


def test_a_failing_handler_factory_closes_the_connection(reactor, network, certificate, logged):
    def factory(channel):
        raise RuntimeError("no handler today")

    protocol = QuicServerProtocol(
        reactor, server_configuration(certificate.certificate, certificate.private_key), factory
    )
    network.listen(protocol, *SERVER_ADDRESS)
    client = open_client(reactor, certificate)

    termination = succeeded(client.when_closed(), network)

    assert (termination.error_code, termination.reason) == (0x1, "connection handler failed")
    assert not termination.application
    network.run(1.0)
    assert protocol.connection_count == 0
    assert any("log_failure" in event for event in logged)


def test_a_failing_handler_method_does_not_break_the_server(reactor, network, certificate, logged):
    class Broken(EchoHandler):
        def stream_data_received(self, stream_id, data, end_stream):
            if data == b"boom":
                raise ValueError("handler bug")
            super().stream_data_received(stream_id, data, end_stream)

    protocol = QuicServerProtocol(
        reactor,
        server_configuration(certificate.certificate, certificate.private_key),
        lambda channel: Broken(channel),
    )
    network.listen(protocol, *SERVER_ADDRESS)
    client = open_client(reactor, certificate)

    client.request(b"boom")
    assert succeeded(client.request(b"fine"), network) == b"fine"
    assert any(
        "log_failure" in event and event["log_failure"].check(ValueError) for event in logged
    )


# -- bad datagrams ------------------------------------------------------------


def test_unsupported_version_is_answered_with_version_negotiation(network, server, sink):
    send_raw(network, long_header_packet(1200, version=0x1A2A3A4A))

    [reply] = replies_to(network, CLIENT)
    header = pull_quic_header(Buffer(data=reply.data), host_cid_length=8)
    assert header.packet_type == QuicPacketType.VERSION_NEGOTIATION
    assert QuicProtocolVersion.VERSION_1 in header.supported_versions
    assert header.destination_cid == b"\x22" * 8
    assert server.protocol.connection_count == 0


def test_version_negotiation_is_never_answered(network, server, sink):
    negotiation = encode_quic_version_negotiation(
        source_cid=b"\x33" * 8, destination_cid=b"\x44" * 8, supported_versions=[0x0A0A0A0A] * 300
    )
    assert len(negotiation) >= 1200

    send_raw(network, negotiation)

    assert replies_to(network, CLIENT) == []
    assert server.protocol.connection_count == 0


def test_a_short_packet_of_unsupported_version_is_dropped(network, server, sink):
    send_raw(network, long_header_packet(200, version=0x1A2A3A4A))
    assert replies_to(network, CLIENT) == []


def test_initials_shorter_than_1200_bytes_are_dropped(network, server, sink):
    send_raw(network, long_header_packet(1199))

    assert replies_to(network, CLIENT) == []
    assert server.protocol.connection_count == 0
    assert server.protocol.routed_connection_ids == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\xff" * 3,
        b"\x40" + b"\x55" * 40,
        long_header_packet(1300)[:1250],
        long_header_packet(1200, first_byte=0x83),
        long_header_packet(1200, first_byte=0xE3),
        os.urandom(1500),
    ],
    ids=[
        "empty",
        "one-byte",
        "truncated",
        "short-header-unknown-cid",
        "truncated-initial",
        "fixed-bit-zero",
        "handshake-unknown-cid",
        "random",
    ],
)
def test_garbage_is_dropped_and_the_server_still_serves(
    reactor, network, server, certificate, garbage
):
    protocol = server.protocol
    protocol.datagramReceived(garbage, CLIENT)
    network.settle()

    assert protocol.connection_count == 0
    client = open_client(reactor, certificate)
    assert succeeded(client.request(b"ok"), network) == b"ok"


def test_a_short_header_packet_that_does_not_decrypt_is_dropped(
    reactor, network, server, certificate
):
    client = open_client(reactor, certificate)
    assert succeeded(client.request(b"first"), network) == b"first"
    [sent] = [
        datagram
        for datagram in network.delivered
        if datagram.destination == SERVER_ADDRESS and not datagram.data[0] & 0x80
    ][-1:]
    forged = sent.data[:9] + os.urandom(len(sent.data) - 9)

    server.protocol.datagramReceived(forged, sent.source)
    network.settle()

    assert server.protocol.connection_count == 1
    assert succeeded(client.request(b"second"), network) == b"second"


def test_a_full_size_garbage_initial_creates_state_that_expires(reactor, network, server):
    server.protocol.datagramReceived(long_header_packet(1200), CLIENT)
    assert server.protocol.connection_count == 1

    network.run(130.0, step=1.0)

    assert server.protocol.connection_count == 0
    assert server.protocol.routed_connection_ids == 0
    assert server.handlers.handlers == []


def test_send_errors_are_survived(reactor, network, server, certificate):
    server.port.failing_writes = 3

    client = open_client(reactor, certificate)

    assert server.port.failing_writes == 0
    assert succeeded(client.request(b"retransmitted"), network, seconds=5) == b"retransmitted"


def test_a_client_configuration_is_refused(reactor, certificate):
    configuration = server_configuration(certificate.certificate, certificate.private_key)
    configuration.is_client = True
    with pytest.raises(ValueError):
        QuicServerProtocol(reactor, configuration, HandlerFactory())


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
