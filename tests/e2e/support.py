"""Helpers for end-to-end tests (imported as ``tests.e2e.support``)."""

from __future__ import annotations

import itertools
import os

from runtara.client import RemoteError, RuntaraClient
from runtara.config import config_from_env
from runtara.runtime import start_core

_ids = itertools.count(1)


def unique(prefix: str = "i") -> str:
    """An instance id no other test uses."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


class Servers:
    """Starts runtara-cores on one database and stops them after the test."""

    def __init__(self, reactor, state_dir, database_url) -> None:
        self.reactor = reactor
        self.state_dir = state_dir
        self.database_url = database_url
        self.running = []
        self.clients = []

    async def start(self, **overrides):
        settings = {
            "state_dir": self.state_dir,
            "quic_host": "127.0.0.1",
            "quic_port": 0,
            "http_port": 0,
        }
        if self.database_url is not None:
            settings["database_url"] = self.database_url
        settings.update(overrides)
        core = await start_core(config_from_env({}, **settings), self.reactor)
        self.running.append(core)
        return core

    async def stop(self, core) -> None:
        self.running.remove(core)
        await core.stop()

    async def connect(self, core, **options) -> RuntaraClient:
        options.setdefault("cafile", str(core.certificate_path))
        client = await RuntaraClient.connect(self.reactor, "127.0.0.1", core.port, **options)
        self.clients.append(client)
        return client

    async def close_all(self) -> None:
        for client in self.clients:
            await client.close()
        for core in list(self.running):
            await self.stop(core)


async def registered(client, instance_id=None, tenant_id="tenant-a", **fields):
    """Register ``instance_id`` (a fresh one by default) and return its id."""
    instance_id = instance_id or unique()
    answer = await client.call(
        "register_instance", {"instance_id": instance_id, "tenant_id": tenant_id, **fields}
    )
    assert answer["success"], answer
    return instance_id


async def remote_error(call):
    """Await ``call`` (a coroutine or Deferred) and return the RemoteError it fails with."""
    try:
        answer = await call
    except RemoteError as error:
        return error
    raise AssertionError(f"expected an error response, got {answer!r}")


def persistence_of(core):
    """The persistence a running core uses: what an operator's tools write to."""
    return core.service.database.persistence


async def wait_for_status(client, instance_id, expected, timeout=5.0):
    from twisted.internet import reactor, task

    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        status = await client.call("get_instance_status", {"instance_id": instance_id})
        if status["status"] == expected:
            return status
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{instance_id} never became {expected}: {status}")
