"""Fixtures for the SDK's tests: a runtara-core process and workflow processes
(every child process is SIGKILLed, if still running, and reaped at teardown),
and a runtara-core in this process with one fresh instance per test.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.sdk.live import LiveInstance, start_local_core
from tests.sdk.support import Process, ServerProcess, WorkflowRun


@pytest.fixture
def processes():
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


@pytest_twisted.async_yield_fixture
async def server(tmp_path, processes):
    server = ServerProcess(tmp_path, processes)
    await server.start()
    yield server


@pytest.fixture
def workflow_run(server, tmp_path, processes):
    """``workflow_run(plan, script="scripted.py")``: a new instance following ``plan``."""

    def new_run(plan, script="scripted.py") -> WorkflowRun:
        return WorkflowRun(server, tmp_path, processes, plan, script)

    return new_run


@pytest_twisted.async_yield_fixture(scope="module")
async def local_core(tmp_path_factory):
    """runtara-core in this process, shared by a module's tests (each has its own instance)."""
    core = await start_local_core(tmp_path_factory.mktemp("core"))
    yield core
    await core.stop()


@pytest_twisted.async_yield_fixture
async def live(local_core):
    """``await live(client_class=..., heartbeat_interval=...)``: a new ``LiveInstance``."""
    registered: list[LiveInstance] = []

    async def register(**options) -> LiveInstance:
        instance = await LiveInstance.register(local_core, **options)
        registered.append(instance)
        return instance

    yield register
    for instance in registered:
        await instance.client.close()


@pytest_twisted.async_yield_fixture
async def instance(live):
    """A new instance on ``local_core``, registered by an ``InstanceClient``."""
    yield await live()
