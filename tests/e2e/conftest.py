"""Fixtures for end-to-end tests: a real runtara-core on 127.0.0.1, port 0,
and real QUIC clients that verify its certificate."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.e2e.support import Servers
from tests.pg import create_database, postgres_marks


@pytest_twisted.async_yield_fixture
async def servers(tmp_path, database_url):
    from twisted.internet import reactor

    servers = Servers(reactor, tmp_path / "state", database_url)
    yield servers
    await servers.close_all()


@pytest_twisted.async_yield_fixture(
    params=["sqlite", pytest.param("postgresql", marks=postgres_marks())]
)
async def database_url(request):
    """The server's database: None for the embedded SQLite default in the
    state directory, else the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    from twisted.internet import reactor

    database = await create_database(reactor)
    yield database.dsn
    await database.drop()


@pytest_twisted.async_yield_fixture
async def core(servers):
    yield await servers.start()


@pytest.fixture
def connect(servers, core):
    """``await connect()``: a new client of the default server."""

    async def connect_client(**options):
        return await servers.connect(core, **options)

    return connect_client
