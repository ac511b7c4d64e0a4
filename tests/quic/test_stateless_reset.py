"""Stateless resets (RFC 9000 section 10.3) over the in-memory network, on a task.Clock.

A "restart" here stops the server's in-memory port and binds a new
``QuicServerProtocol`` at the same address: it knows none of the old
connections, as a restarted process would not.
"""

from __future__ import annotations

import os
import stat

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.task import Clock

from runtara.quic.client import STATELESS_RESET, QuicConnectionError, connect
from runtara.quic.reset import (
    MAX_RESET_SIZE,
    MIN_RESET_SIZE,
    RESET_KEY_FILE,
    StatelessResetter,
    is_stateless_reset,
    load_or_create_reset_key,
    reset_token,
)
from runtara.quic.server import QuicServerProtocol, server_configuration
from tests.quic.support import SERVER_ADDRESS, HandlerFactory, outcome, succeeded

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CLIENT = ("127.0.0.1", 40000)


class Server:
    """A QuicServerProtocol at ``SERVER_ADDRESS`` that can be restarted."""

    def __init__(self, reactor, certificate, key: bytes | None) -> None:
        self.reactor = reactor
        self.certificate = certificate
        self.port = None
        self.start(key)

    def start(self, key: bytes | None) -> None:
        resetter = None if key is None else StatelessResetter(key, self.reactor)
        self.protocol = QuicServerProtocol(
            self.reactor,
            server_configuration(self.certificate.certificate, self.certificate.private_key),
            HandlerFactory(),
            resetter,
        )
        self.port = self.reactor.network.listen(self.protocol, *SERVER_ADDRESS)

    def restart(self, key: bytes | None = KEY) -> None:
        self.port.stopListening()
        self.start(key)


def open_client(reactor, certificate, **options):
    options.setdefault("cadata", certificate.certificate.public_bytes(Encoding.PEM))
    return succeeded(connect(reactor, *SERVER_ADDRESS, **options), reactor.network)


def address_of(client) -> tuple[str, int]:
    host = client.transport.getHost()
    return (host.host, host.port)


def destination_cid(datagram: bytes) -> bytes:
    return pull_quic_header(Buffer(data=datagram), host_cid_length=8).destination_cid


def datagrams(network, source, destination):
    return [d for d in network.delivered if d.source == source and d.destination == destination]


# -- the server's resets -----------------------------------------------------------------


def test_a_server_with_the_same_key_resets_a_connection_it_never_saw(reactor, network, certificate):
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate)
    client_address = address_of(client)
    assert succeeded(client.request(b"before"), network) == b"before"
    server.restart(KEY)
    network.delivered.clear()

    failure = outcome(client.request(b"after"), network)

    assert failure.check(QuicConnectionError)
    assert failure.value.reason == STATELESS_RESET
    assert succeeded(client.when_closed(), network).reason == STATELESS_RESET
    [trigger, *_] = datagrams(network, client_address, SERVER_ADDRESS)
    [reset] = datagrams(network, SERVER_ADDRESS, client_address)
    assert MIN_RESET_SIZE <= len(reset.data) < len(trigger.data)
    assert reset.data[0] & 0xC0 == 0x40, "a reset looks like a short-header packet"
    assert reset.data[-16:] == reset_token(KEY, destination_cid(trigger.data))


def test_tokens_of_connection_ids_issued_later_are_derived_too(reactor, network, certificate):
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate)
    first_cid = client._quic._peer_cid.cid
    client._quic.change_connection_id()
    assert succeeded(client.request(b"on a new connection id"), network)
    server.restart(KEY)
    network.delivered.clear()

    failure = outcome(client.request(b"after"), network)

    assert failure.check(QuicConnectionError) and failure.value.reason == STATELESS_RESET
    [trigger, *_] = [d for d in network.delivered if d.destination == SERVER_ADDRESS]
    assert destination_cid(trigger.data) != first_cid


def test_a_connection_id_is_routed_before_the_packet_announcing_it_leaves(
    reactor, network, certificate
):
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate)
    first_cid = client._quic._peer_cid.cid
    network.delivered.clear()

    client._quic.change_connection_id()  # right away: the server has heard nothing since
    answer = succeeded(client.request(b"on a new connection id"), network)

    assert answer == b"on a new connection id"
    assert not client.terminated and server.protocol.connection_count == 1
    sent = datagrams(network, address_of(client), SERVER_ADDRESS)
    assert sent and all(destination_cid(d.data) != first_cid for d in sent)


def test_a_reset_under_another_key_is_ignored(reactor, network, certificate):
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate, idle_timeout=5.0)
    server.restart(OTHER_KEY)

    pending = client.request(b"after", end_stream=False)
    network.run(2.0)

    assert not pending.called
    assert not client.terminated
    assert any(d.source == SERVER_ADDRESS for d in network.delivered[-3:])
    pending.addErrback(lambda failure: None)


def test_a_server_without_a_key_sends_no_reset(reactor, network, certificate):
    server = Server(reactor, certificate, None)
    open_client(reactor, certificate)
    server.restart(None)
    network.delivered.clear()

    server.protocol.datagramReceived(b"\x41" + b"\x00" * 8 + os.urandom(40), CLIENT)

    assert network.queue == []


@pytest.mark.parametrize(
    ("trigger_size", "reset_size"),
    [(MIN_RESET_SIZE + 1, MIN_RESET_SIZE), (30, 29), (44, MAX_RESET_SIZE), (1200, MAX_RESET_SIZE)],
)
def test_a_reset_is_smaller_than_its_trigger_and_at_least_21_bytes(
    reactor, network, certificate, trigger_size, reset_size
):
    server = Server(reactor, certificate, KEY)
    cid = os.urandom(8)

    server.protocol.datagramReceived(b"\x41" + cid + os.urandom(trigger_size - 9), CLIENT)

    [reset] = network.queue
    assert reset.destination == CLIENT
    assert len(reset.data) == reset_size
    assert reset.data[-16:] == reset_token(KEY, cid)


@pytest.mark.parametrize("size", [9, 15, MIN_RESET_SIZE])
def test_a_packet_too_small_for_a_smaller_reset_gets_no_answer(reactor, network, certificate, size):
    server = Server(reactor, certificate, KEY)

    server.protocol.datagramReceived(b"\x41" + os.urandom(size - 1), CLIENT)

    assert network.queue == []


def test_a_reset_never_answers_a_reset(reactor, network, certificate):
    """Two servers resetting each other's resets shrink them until they stop."""
    server = Server(reactor, certificate, KEY)
    packet = b"\x41" + os.urandom(MAX_RESET_SIZE + 10)
    answers = 0
    while True:
        server.protocol.datagramReceived(packet, CLIENT)
        if not network.queue:
            break
        packet = network.queue.pop().data
        answers += 1
    assert answers == MAX_RESET_SIZE - MIN_RESET_SIZE + 1


def test_long_header_packets_for_unknown_connections_get_no_reset(reactor, network, certificate):
    server = Server(reactor, certificate, KEY)
    handshake = bytes([0xE3]) + (1).to_bytes(4, "big") + b"\x08" + os.urandom(8) + b"\x00"

    server.protocol.datagramReceived(handshake + os.urandom(100), CLIENT)

    assert network.queue == []


def test_resets_are_rate_limited():
    clock = Clock()
    resetter = StatelessResetter(KEY, clock, rate=10.0, burst=5)

    sent = [resetter.reset_for(100, os.urandom(8)) for _ in range(8)]
    assert sum(reset is not None for reset in sent) == 5
    clock.advance(0.1)
    assert resetter.reset_for(100, b"c" * 8) is not None
    assert resetter.reset_for(100, b"c" * 8) is None
    clock.advance(10.0)
    assert sum(resetter.reset_for(100, b"d" * 8) is not None for _ in range(10)) == 5


# -- the client notices ------------------------------------------------------------------


def test_a_held_call_fails_about_a_second_after_the_server_is_back(reactor, network, certificate):
    """A call held open (a sleep) probes the server every second: a restarted
    server answers a probe with a reset, so the call fails soon and is retried."""
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate)
    held = client.request(b"held open", end_stream=False)
    network.run(3.0)
    server.restart(KEY)
    back_at = reactor.seconds()

    failure = outcome(held, network, seconds=5.0)

    assert failure.check(QuicConnectionError) and failure.value.reason == STATELESS_RESET
    assert reactor.seconds() - back_at <= 1.1


def test_an_idle_client_probes_after_an_unanswered_ping(reactor, network, certificate):
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate, keepalive_interval=10.0, idle_timeout=30.0)
    server.port.stopListening()
    network.run(12.0, step=0.05)
    server.start(KEY)
    back_at = reactor.seconds()

    termination = succeeded(client.when_closed(), network, seconds=5.0)

    assert termination.reason == STATELESS_RESET
    assert reactor.seconds() - back_at <= 1.1


def test_an_idle_answered_connection_pings_at_the_keepalive_pace(reactor, network, certificate):
    Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate, keepalive_interval=10.0)
    assert succeeded(client.request(b"one call"), network)
    client_address = address_of(client)
    network.delivered.clear()

    network.run(25.0, step=0.05)

    sent = datagrams(network, client_address, SERVER_ADDRESS)
    assert 2 <= len(sent) <= 8, "about one PING (and its ACKs) per 10 s, not one per second"


def test_a_closing_client_ignores_resets(reactor, network, certificate):
    server = Server(reactor, certificate, KEY)
    client = open_client(reactor, certificate)
    cid = client._quic._peer_cid.cid
    closed = client.close(0, "bye")
    reset = StatelessResetter(KEY, reactor).reset_for(100, cid)

    client.datagramReceived(reset, SERVER_ADDRESS)

    assert succeeded(closed, network) is None
    assert server.protocol.connection_count == 0


def test_only_the_token_of_the_connection_id_in_use_counts():
    token = reset_token(KEY, b"cid-in-use")
    assert is_stateless_reset(b"\x41" + os.urandom(10) + token, [token])
    assert not is_stateless_reset(b"\x41" + os.urandom(10) + token, [reset_token(KEY, b"x")])
    assert not is_stateless_reset(b"\xc1" + os.urandom(10) + token, [token]), "long header"
    assert not is_stateless_reset(b"\x41" + os.urandom(3) + token, [token]), "20 bytes"
    assert not is_stateless_reset(b"\x41" + os.urandom(10) + token, [b""])


# -- the key -------------------------------------------------------------------------------


def test_the_key_is_created_once_private_and_reused(tmp_path):
    state_dir = tmp_path / "state"

    key = load_or_create_reset_key(state_dir)

    path = state_dir / RESET_KEY_FILE
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_reset_key(state_dir) == key
    assert [p.name for p in state_dir.iterdir()] == [RESET_KEY_FILE]


def test_a_damaged_key_is_refused(tmp_path):
    (tmp_path / RESET_KEY_FILE).write_bytes(b"short")
    os.chmod(tmp_path / RESET_KEY_FILE, 0o600)

    with pytest.raises(ValueError, match="holds 5 bytes, not 32"):
        load_or_create_reset_key(tmp_path)
