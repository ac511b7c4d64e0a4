"""Fixtures for the SDK's end-to-end tests: a runtara-core process and workflow processes.

Every child process is SIGKILLed (if still running) and reaped at teardown.
"""

from __future__ import annotations

import pytest
import pytest_twisted

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


@pytest_twisted.async_yield_fixture
async def core(tmp_path):
    """A runtara-core running in this process, on SQLite in the test's directory."""
    from twisted.internet import reactor

    from tests.sdk.inprocess import start_inprocess_core

    running = await start_inprocess_core(tmp_path / "core", reactor)
    yield running
    await running.service.stopService()
