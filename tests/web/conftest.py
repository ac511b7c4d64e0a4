"""Fixtures of the HTTP API tests: a real runtara-core with its HTTP server on
127.0.0.1 port 0, on each engine, and an ``Api`` client of it."""

from __future__ import annotations

import pytest_twisted

from tests.e2e.conftest import connect, database_url, servers
from tests.web.support import Api

__all__ = ["connect", "database_url", "servers"]


@pytest_twisted.async_yield_fixture
async def core(servers):
    yield await servers.start()


@pytest_twisted.async_yield_fixture
async def api(core):
    from twisted.internet import reactor

    yield Api(reactor, core.http_url)
