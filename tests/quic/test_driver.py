"""QuicDriver: the loop around one aioquic connection, on a task.Clock."""

from __future__ import annotations

import errno
import socket

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from runtara.quic._driver import QuicDriver, datagram_writer, describe_termination
from runtara.quic.server import ALPN, QuicServerProtocol, server_configuration
from tests.quic.support import SERVER_ADDRESS, HandlerFactory


class RecordingTransport:
    """Records written datagrams; raises ``OSError`` for the first ``failures`` writes."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.written: list[tuple[bytes, tuple]] = []

    def write(self, packet, addr):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        self.written.append((packet, addr))


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(500.0)
    return clock


def client_quic(**options) -> QuicConnection:
    options.setdefault("alpn_protocols", [ALPN])
    return QuicConnection(configuration=QuicConfiguration(is_client=True, **options))


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_connect_sends_the_first_flight_and_arms_one_timer(clock):
    transport = RecordingTransport()
    quic = client_quic()
    driver = QuicDriver(clock, quic, transport, lambda event: None)

    driver.connect(SERVER_ADDRESS)

    assert transport.written
    assert all(addr == SERVER_ADDRESS for _, addr in transport.written)
    assert len(transport.written[0][0]) >= 1200
    calls = clock.getDelayedCalls()
    assert len(calls) == 1
    assert calls[0].getTime() == pytest.approx(quic.get_timer())


def test_the_timer_fires_on_the_clock_and_is_rearmed(clock):
    transport = RecordingTransport()
    quic = client_quic()
    driver = QuicDriver(clock, quic, transport, lambda event: None)
    driver.connect(SERVER_ADDRESS)
    first_flight = len(transport.written)
    first_deadline = clock.getDelayedCalls()[0].getTime()

    clock.advance(first_deadline - clock.seconds())

    assert len(transport.written) > first_flight, "the probe timeout retransmits"
    calls = clock.getDelayedCalls()
    assert len(calls) == 1
    assert calls[0].getTime() > first_deadline
    assert calls[0].getTime() == pytest.approx(quic.get_timer())


def test_idle_timeout_terminates_and_leaves_nothing_armed(clock):
    events = []
    quic = client_quic(idle_timeout=5.0)
    driver = QuicDriver(clock, quic, RecordingTransport(), events.append)
    driver.connect(SERVER_ADDRESS)

    clock.pump([0.5] * 200)

    terminated = [event for event in events if isinstance(event, ConnectionTerminated)]
    assert len(terminated) == 1
    assert driver.terminated
    assert clock.getDelayedCalls() == []
    assert describe_termination(terminated[0]).startswith("transport close 0x")


def test_send_errors_are_survived_and_quic_retransmits(clock):
    transport = RecordingTransport(failures=1000)
    quic = client_quic()
    driver = QuicDriver(clock, quic, transport, lambda event: None)

    driver.connect(SERVER_ADDRESS)
    assert transport.written == []
    assert len(clock.getDelayedCalls()) == 1

    transport.failures = 0
    clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    assert transport.written, "the probe after the dropped flight went out"


def test_message_too_long_is_dropped_too(clock):
    from twisted.internet.error import MessageLengthError

    class TooLong:
        def write(self, packet, addr):
            raise MessageLengthError("message too long")

    driver = QuicDriver(clock, client_quic(), TooLong(), lambda event: None)
    driver.connect(SERVER_ADDRESS)
    assert len(clock.getDelayedCalls()) == 1


def test_transmit_soon_coalesces_into_one_call(reactor, server, network):
    clock = reactor
    events = []
    port = network.listen(_DriverProtocol(clock, events))
    driver = port.protocol.driver
    driver.connect(SERVER_ADDRESS)
    network.settle()
    assert any(isinstance(event, HandshakeCompleted) for event in events)
    armed = len(clock.getDelayedCalls())

    for stream_id in (0, 4, 8):
        driver.connection.send_stream_data(stream_id, b"ping", end_stream=True)
        driver.transmit_soon()
    assert len(clock.getDelayedCalls()) == armed + 1
    network.run(0.1)

    echoed = [event for event in events if isinstance(event, StreamDataReceived)]
    assert {event.stream_id for event in echoed if event.end_stream} == {0, 4, 8}


def test_an_exception_in_the_event_handler_is_logged_and_the_loop_goes_on(
    reactor, server, network, logged
):
    clock = reactor
    events = []

    def handle(event):
        events.append(event)
        raise RuntimeError("handler bug")

    port = network.listen(_DriverProtocol(clock, events, handle))
    port.protocol.driver.connect(SERVER_ADDRESS)
    network.settle()

    assert any(isinstance(event, HandshakeCompleted) for event in events)
    failures = [e for e in logged if e.get("log_level") == LogLevel.critical and "log_failure" in e]
    assert failures
    assert all(e["log_failure"].check(RuntimeError) for e in failures)


def test_datagrams_after_termination_are_ignored(clock):
    events = []
    transport = RecordingTransport()
    quic = client_quic()
    driver = QuicDriver(clock, quic, transport, events.append)
    driver.connect(SERVER_ADDRESS)
    driver.abort()
    sent = len(transport.written)

    driver.datagram_received(b"\x00" * 1200, SERVER_ADDRESS)
    driver.transmit_soon()
    driver.transmit()

    assert driver.terminated
    assert clock.getDelayedCalls() == []
    assert len(transport.written) == sent
    assert events == []


class _DriverProtocol:
    """A bare datagram protocol around a client QuicDriver, for the memory network."""

    def __init__(self, clock, events, handle=None) -> None:
        self.clock = clock
        self.events = events
        self.handle = handle or events.append
        self.driver: QuicDriver | None = None

    def makeConnection(self, transport) -> None:
        quic = client_quic(verify_mode=0)
        self.driver = QuicDriver(self.clock, quic, transport, self.handle)

    def datagramReceived(self, data, addr) -> None:
        self.driver.datagram_received(data, addr)

    def doStop(self) -> None:
        self.driver.abort()


# -- CPU per call: acknowledgements ride with data, one armed call, socket writes ----


def _exchange(driver, events, network, stream_id, delay):
    """One call: a request on ``stream_id``, then the clock in small steps until the
    echo's FIN is back (the echo leaves the server ``delay`` seconds after the request)."""
    driver.connection.send_stream_data(stream_id, b"request", end_stream=True)
    driver.transmit_soon()
    for _ in range(1000):
        network.settle()
        if any(
            isinstance(event, StreamDataReceived)
            and event.stream_id == stream_id
            and event.end_stream
            for event in events
        ):
            return
        network.clock.advance(delay / 4)
    raise AssertionError(f"no answer on stream {stream_id}")


def test_a_sequential_call_costs_one_datagram_each_way(reactor, network, certificate):
    # The server answers 0.4 ms after each request, inside aioquic's 1 ms ACK delay,
    # the way a call answered after a quick commit is.
    delay = 0.0004
    server = QuicServerProtocol(
        reactor,
        server_configuration(certificate.certificate, certificate.private_key),
        HandlerFactory(reactor, delay),
    )
    network.listen(server, *SERVER_ADDRESS)
    events = []
    client = network.listen(_DriverProtocol(reactor, events))
    client.protocol.driver.connect(SERVER_ADDRESS)
    network.settle()
    _exchange(client.protocol.driver, events, network, 0, delay)
    network.run(0.1)
    sent_before = len(network.delivered)

    calls = 20
    for number in range(1, calls + 1):
        _exchange(client.protocol.driver, events, network, 4 * number, delay)

    exchanged = network.delivered[sent_before:]
    to_server = [d for d in exchanged if d.destination == SERVER_ADDRESS]
    to_client = [d for d in exchanged if d.source == SERVER_ADDRESS]
    assert (len(to_server), len(to_client)) == (calls, calls)


def timers_of(driver, clock):
    """The calls ``driver`` armed on ``clock``."""
    calls = clock.getDelayedCalls()
    return [call for call in calls if getattr(call.func, "__self__", None) is driver]


def test_a_later_deadline_moves_the_armed_call_instead_of_replacing_it(reactor, server, network):
    events = []
    port = network.listen(_DriverProtocol(reactor, events))
    driver = port.protocol.driver
    driver.connect(SERVER_ADDRESS)
    network.run(0.1)
    reactor.advance(1.0)
    driver.connection.send_ping(1)
    driver.transmit()
    [armed] = timers_of(driver, reactor)
    probe_deadline = armed.getTime()

    network.run(0.01)  # the server's ACK arrives: back to the (later) idle deadline

    assert timers_of(driver, reactor) == [armed]
    assert armed.getTime() > probe_deadline
    assert armed.getTime() == pytest.approx(driver.connection.get_timer())


def test_an_earlier_deadline_replaces_the_armed_call(reactor, server, network):
    events = []
    port = network.listen(_DriverProtocol(reactor, events))
    driver = port.protocol.driver
    driver.connect(SERVER_ADDRESS)
    network.run(0.1)
    [armed] = timers_of(driver, reactor)

    driver.connection.send_stream_data(0, b"data", end_stream=True)
    driver.transmit()

    [rearmed] = timers_of(driver, reactor)
    assert rearmed is not armed and not armed.active()
    assert rearmed.getTime() < armed.getTime()
    assert rearmed.getTime() == pytest.approx(driver.connection.get_timer())


def test_a_udp_port_is_written_through_its_socket():
    from twisted.internet import reactor

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    try:
        writer = datagram_writer(port)
        assert writer.write == port.getHandle().sendto
        writer.write(b"datagram", receiver.getsockname())
        assert receiver.recvfrom(100) == (b"datagram", ("127.0.0.1", port.getHost().port))
    finally:
        port.stopListening()
        receiver.close()


def test_any_other_transport_is_written_as_it_is():
    transport = RecordingTransport()
    assert datagram_writer(transport) is transport
