"""Fixtures for the QUIC transport tests: a certificate, a clock-driven network, a server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from runtara.certificate import ServerCertificate, load_or_create_certificate
from runtara.quic.server import QuicServerProtocol, server_configuration
from tests.quic.support import SERVER_ADDRESS, HandlerFactory, MemoryNetwork, MemoryReactor


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> ServerCertificate:
    """One self-signed ``localhost`` certificate for the whole session."""
    return load_or_create_certificate(tmp_path_factory.mktemp("quic-state"))


@pytest.fixture
def reactor() -> MemoryReactor:
    """A clock (started away from 0) whose ``listenUDP`` binds in-memory ports."""
    memory_reactor = MemoryReactor()
    memory_reactor.advance(1000.0)
    return memory_reactor


@pytest.fixture
def network(reactor) -> MemoryNetwork:
    return reactor.network


@dataclass
class MemoryServer:
    protocol: QuicServerProtocol
    handlers: HandlerFactory
    port: object


@pytest.fixture
def server(reactor, network, certificate) -> MemoryServer:
    """A ``QuicServerProtocol`` at ``SERVER_ADDRESS`` whose handlers echo."""
    handlers = HandlerFactory()
    protocol = QuicServerProtocol(
        reactor,
        server_configuration(certificate.certificate, certificate.private_key),
        handlers,
    )
    port = network.listen(protocol, *SERVER_ADDRESS)
    return MemoryServer(protocol, handlers, port)
