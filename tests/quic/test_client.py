"""The QUIC client: in memory on a task.Clock, and end to end over real UDP sockets."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.error import DNSLookupError

from runtara.quic.client import (
    CertificateMismatch,
    ConnectTimeout,
    QuicConnectionError,
    Termination,
    client_configuration,
    connect,
)
from runtara.quic.server import ALPN, QuicServerProtocol, server_configuration
from tests.quic.support import SERVER_ADDRESS, HandlerFactory, outcome, succeeded

BAD_CERTIFICATE = 0x100 + 42


def pem(certificate) -> bytes:
    return certificate.certificate.public_bytes(Encoding.PEM)


def client_ports(network):
    return [number for number in network.ports if number != SERVER_ADDRESS[1]]


# -- in memory ------------------------------------------------------------------


def test_connect_fires_after_the_handshake(reactor, network, server, certificate):
    attempt = connect(reactor, *SERVER_ADDRESS, cadata=pem(certificate))
    client = succeeded(attempt, network)

    assert client.alpn_protocol == ALPN
    assert client.peer == SERVER_ADDRESS
    assert not client.terminated
    assert reactor.interfaces == ["0.0.0.0"]


def test_a_host_name_is_resolved(reactor, network, server, certificate):
    client = succeeded(
        connect(reactor, "localhost", SERVER_ADDRESS[1], cadata=pem(certificate)), network
    )
    assert client.peer == SERVER_ADDRESS


def test_an_unknown_host_name_fails(reactor, network):
    failure = outcome(connect(reactor, "nowhere.invalid", 1, verify=False), network)
    assert failure.check(DNSLookupError)
    assert network.ports == {}


def test_an_ipv6_literal_binds_an_ipv6_port(reactor, network, certificate):
    configuration = server_configuration(certificate.certificate, certificate.private_key)
    network.listen(QuicServerProtocol(reactor, configuration, HandlerFactory()), "::1", 4434)

    client = succeeded(connect(reactor, "::1", 4434, cadata=pem(certificate)), network)

    assert reactor.interfaces == ["::"]
    assert succeeded(client.request(b"v6"), network) == b"v6"


@pytest.mark.parametrize(
    "spelling",
    [
        lambda fingerprint: fingerprint,
        lambda fingerprint: fingerprint.lower(),
        lambda fingerprint: fingerprint.replace(":", ""),
        lambda fingerprint: fingerprint.replace(":", "").lower(),
    ],
    ids=["canonical", "lower", "compact", "compact-lower"],
)
def test_the_pinned_fingerprint_is_accepted(reactor, network, server, certificate, spelling):
    attempt = connect(reactor, *SERVER_ADDRESS, fingerprint=spelling(certificate.fingerprint))
    assert succeeded(attempt, network).alpn_protocol == ALPN


def test_a_wrong_fingerprint_is_refused(reactor, network, server, certificate):
    wrong = "00:" * 31 + "00"

    failure = outcome(connect(reactor, *SERVER_ADDRESS, fingerprint=wrong), network)

    assert failure.check(CertificateMismatch)
    assert failure.value.expected == wrong
    assert failure.value.actual == certificate.fingerprint
    assert failure.value.error_code == BAD_CERTIFICATE
    assert client_ports(network) == []
    network.run(2.0)
    assert server.handlers.handlers == [], "the server never completed the handshake"
    assert server.protocol.connection_count == 0
    assert reactor.getDelayedCalls() == []


def test_an_untrusted_certificate_is_refused_by_default(reactor, network, server):
    failure = outcome(connect(reactor, *SERVER_ADDRESS), network)

    assert failure.check(QuicConnectionError)
    assert failure.value.error_code == BAD_CERTIFICATE
    assert client_ports(network) == []


def test_the_server_name_must_match_the_certificate(reactor, network, server, certificate):
    attempt = connect(
        reactor, *SERVER_ADDRESS, cadata=pem(certificate), server_name="runtara.example"
    )
    failure = outcome(attempt, network)

    assert failure.check(QuicConnectionError)
    assert failure.value.error_code == BAD_CERTIFICATE


def test_verification_can_be_skipped_explicitly(reactor, network, server):
    assert succeeded(connect(reactor, *SERVER_ADDRESS, verify=False), network).alpn_protocol


def test_contradictory_or_malformed_options_raise_at_once(reactor):
    with pytest.raises(ValueError):
        connect(reactor, *SERVER_ADDRESS, verify=False, fingerprint="AB" * 32)
    with pytest.raises(ValueError):
        connect(reactor, *SERVER_ADDRESS, verify=False, cafile="/etc/ssl/ca.pem")
    with pytest.raises(ValueError):
        connect(reactor, *SERVER_ADDRESS, fingerprint="not hex")
    assert reactor.network.ports == {}


def test_a_ca_and_a_pin_both_apply(reactor, network, server, certificate):
    configuration = client_configuration(cadata=pem(certificate), fingerprint="AB" * 32)
    assert configuration.verify_mode is None, "CA verification stays on"
    failure = outcome(
        connect(reactor, *SERVER_ADDRESS, cadata=pem(certificate), fingerprint="AB" * 32), network
    )
    assert failure.check(CertificateMismatch)


def test_connect_times_out(reactor, network):
    started = reactor.seconds()

    failure = outcome(connect(reactor, *SERVER_ADDRESS, verify=False), network, seconds=20)

    assert failure.check(ConnectTimeout)
    assert reactor.seconds() - started == pytest.approx(10.0, abs=0.01)
    assert network.ports == {}
    assert reactor.getDelayedCalls() == []


def test_cancelling_connect_closes_the_attempt(reactor, network):
    attempt = connect(reactor, *SERVER_ADDRESS, verify=False)
    attempt.cancel()

    assert outcome(attempt, network).check(CancelledError)
    network.run(5.0)
    assert network.ports == {}
    assert reactor.getDelayedCalls() == []


def test_concurrent_requests_on_one_connection(reactor, network, server, certificate):
    client = succeeded(connect(reactor, *SERVER_ADDRESS, cadata=pem(certificate)), network)
    payloads = [os.urandom(n * 10) for n in range(100)]

    answers = succeeded(
        gatherResults([client.request(payload) for payload in payloads]), network, seconds=10
    )

    assert answers == payloads
    assert len(server.handlers.handlers[0].finished) == 100


def test_close_fires_after_termination_and_releases_the_port(reactor, network, server, certificate):
    client = succeeded(connect(reactor, *SERVER_ADDRESS, cadata=pem(certificate)), network)

    assert succeeded(client.close(), network) is None

    assert client.terminated
    assert client_ports(network) == []
    termination = succeeded(client.when_closed(), network)
    assert termination == Termination(error_code=0, reason="", application=True)
    assert succeeded(client.close(), network) is None
    failure = outcome(client.request(b"late"), network)
    assert failure.check(QuicConnectionError)


def test_close_is_on_the_wire_before_it_returns(reactor, network, server, certificate):
    client = succeeded(
        connect(reactor, *SERVER_ADDRESS, cadata=pem(certificate), keepalive_interval=0.3),
        network,
    )
    [client_port] = client_ports(network)

    closed = client.close()

    assert [d.destination for d in network.queue if d.source[1] == client_port] == [SERVER_ADDRESS]
    assert not client.terminated, "the closing period is still to run"
    succeeded(closed, network)
    network.run(1.0)
    assert server.protocol.connection_count == 0
    assert reactor.getDelayedCalls() == [], "no keep-alive, no timer is left behind"


def test_pending_requests_fail_when_the_server_closes(reactor, network, server, certificate):
    client = succeeded(connect(reactor, *SERVER_ADDRESS, cadata=pem(certificate)), network)
    pending = client.request(b"no fin", end_stream=False)
    network.run(0.05)

    server.handlers.handlers[0].channel.close(0x42, "maintenance")
    failure = outcome(pending, network)

    assert failure.check(QuicConnectionError)
    assert (failure.value.error_code, failure.value.reason) == (0x42, "maintenance")
    assert failure.value.application


def test_keepalive_keeps_an_idle_connection_open(reactor, network, server, certificate):
    client = succeeded(
        connect(
            reactor,
            *SERVER_ADDRESS,
            cadata=pem(certificate),
            idle_timeout=1.0,
            keepalive_interval=0.3,
        ),
        network,
    )

    network.run(5.0, step=0.05)

    assert not client.terminated
    assert succeeded(client.request(b"still here"), network) == b"still here"


def test_without_keepalive_an_idle_connection_times_out(reactor, network, server, certificate):
    client = succeeded(
        connect(
            reactor,
            *SERVER_ADDRESS,
            cadata=pem(certificate),
            idle_timeout=1.0,
            keepalive_interval=0,
        ),
        network,
    )

    termination = succeeded(client.when_closed(), network, seconds=5.0)

    assert termination.reason == "Idle timeout"
    network.run(1.0)
    assert server.protocol.connection_count == 0


# -- end to end over UDP on 127.0.0.1 -----------------------------------------------


class E2EServer:
    """A real QuicServerProtocol on a UDP port, and the clients connected to it."""

    def __init__(self, reactor, certificate, host="127.0.0.1", **options) -> None:
        self.reactor = reactor
        self.certificate = certificate
        self.handlers = HandlerFactory()
        self.protocol = QuicServerProtocol(
            reactor,
            server_configuration(certificate.certificate, certificate.private_key, **options),
            self.handlers,
        )
        self.port = reactor.listenUDP(0, self.protocol, interface=host)
        self.host = host
        self.clients = []

    async def connect(self, **options):
        options.setdefault("cadata", pem(self.certificate))
        client = await connect(self.reactor, self.host, self.port.getHost().port, **options)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.protocol.close_all(0, "test over")
        await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def udp_server(certificate):
    from twisted.internet import reactor

    server = E2EServer(reactor, certificate)
    yield server
    await server.stop()


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.parametrize("size", [1, 1024 * 1024, 10 * 1024 * 1024], ids=["1B", "1MB", "10MB"])
@pytest_twisted.ensureDeferred
async def test_echo_over_udp(udp_server, size):
    client = await udp_server.connect()
    payload = os.urandom(size)

    assert await client.request(payload) == payload


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_100_concurrent_requests_over_udp(udp_server):
    client = await udp_server.connect()
    payloads = [os.urandom(1 + n * 37) for n in range(100)]

    answers = await gatherResults([client.request(payload) for payload in payloads])

    assert answers == payloads


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_alpn_mismatch_is_refused_over_udp(udp_server):
    with pytest.raises(QuicConnectionError) as refused:
        await udp_server.connect(alpn="h3")
    assert refused.value.error_code == 0x100 + 120
    assert udp_server.handlers.handlers == []


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_wrong_fingerprint_is_refused_over_udp(udp_server):
    with pytest.raises(CertificateMismatch):
        await udp_server.connect(cadata=None, fingerprint="AA" * 32)


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_right_fingerprint_is_accepted_over_udp(udp_server, certificate):
    client = await udp_server.connect(cadata=None, fingerprint=certificate.fingerprint.lower())
    assert await client.request(b"pinned") == b"pinned"


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_cafile_is_accepted_over_udp(udp_server, certificate):
    client = await udp_server.connect(cadata=None, cafile=str(certificate.cert_path))
    assert await client.request(b"ca") == b"ca"


@pytest.mark.e2e
@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
@pytest_twisted.ensureDeferred
async def test_ipv6_loopback(certificate):
    from twisted.internet import reactor

    server = E2EServer(reactor, certificate, host="::1")
    try:
        client = await server.connect()
        assert client.peer[0] == "::1"
        assert await client.request(b"over v6") == b"over v6"
    finally:
        await server.stop()


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_keepalive_outlives_a_short_idle_timeout(certificate):
    from twisted.internet import reactor, task

    server = E2EServer(reactor, certificate, idle_timeout=1.0)
    try:
        kept = await server.connect(idle_timeout=1.0, keepalive_interval=0.3)
        idle = await server.connect(idle_timeout=1.0, keepalive_interval=0)

        termination = await idle.when_closed()
        assert termination.reason == "Idle timeout"
        await task.deferLater(reactor, 2.0 - 1.0, lambda: None)

        assert not kept.terminated
        assert await kept.request(b"alive") == b"alive"
    finally:
        await server.stop()


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_close_all_reaches_every_client_over_udp(udp_server):
    clients = [await udp_server.connect() for _ in range(3)]
    for client in clients:
        assert await client.request(b"handshake confirmed") == b"handshake confirmed"
    closed = gatherResults([client.when_closed() for client in clients])

    await udp_server.protocol.close_all(0x7, "server shutting down")

    assert udp_server.protocol.connection_count == 0
    for termination in await closed:
        assert termination == Termination(0x7, "server shutting down", application=True)
