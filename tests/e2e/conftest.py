"""Fixtures for end-to-end tests: a real runtara-core on 127.0.0.1, port 0,
and real QUIC clients that verify its certificate."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.e2e.support import Servers


@pytest_twisted.async_yield_fixture
async def servers(tmp_path, database_url):
    from twisted.internet import reactor

    servers = Servers(reactor, tmp_path / "state", database_url)
    yield servers
    await servers.close_all()


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path):
    """None: the embedded SQLite default in the state directory."""
    return None


@pytest_twisted.async_yield_fixture
async def core(servers):
    yield await servers.start()


@pytest.fixture
def connect(servers, core):
    """``await connect()``: a new client of the default server."""

    async def connect_client(**options):
        return await servers.connect(core, **options)

    return connect_client
