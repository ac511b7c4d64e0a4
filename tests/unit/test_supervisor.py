"""WorkerSupervisor on a task.Clock with recorded processes: start, relay, restart, stop."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, eventAsJSON
from twisted.python.failure import Failure

from runtara.config import config_from_env
from runtara.service import ListeningAddress
from runtara.supervisor import (
    MAX_RESTART_DELAY_SECONDS,
    STOP_GRACE_SECONDS,
    WorkerSupervisor,
    worker_environment,
)
from runtara.worker import STATUS_FD, WorkerStart

ADDRESS = ListeningAddress("127.0.0.1", 4242)
COMMAND = ["/usr/bin/python3", "-m", "runtara.worker"]


@dataclass
class RecordedProcess:
    """The transport of one spawned process: what was written, closed and signalled."""

    protocol: object
    args: list[str]
    env: dict[str, str]
    child_fds: dict[int, object]
    pid: int
    stdin: bytes = b""
    closed: list[int] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    exited: bool = False

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == 0
        self.stdin += data

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def end(self, reason: Failure) -> None:
        self.exited = True
        self.protocol.processEnded(reason)

    def start_message(self) -> WorkerStart:
        return WorkerStart.read(io.BytesIO(self.stdin))


class ProcessReactor(Clock):
    """A clock whose ``spawnProcess`` records the process instead of starting it."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[RecordedProcess] = []

    def spawnProcess(self, protocol, executable, args, env=None, path=None, childFDs=None, **_):
        assert executable == args[0]
        process = RecordedProcess(
            protocol, list(args), dict(env), dict(childFDs), 100 + len(self.spawned)
        )
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process


def killed() -> Failure:
    return Failure(ProcessTerminated(signal=9))


@pytest.fixture
def reactor() -> ProcessReactor:
    reactor = ProcessReactor()
    reactor.advance(1000.0)
    return reactor


@pytest.fixture
def config(tmp_path: Path):
    return config_from_env(
        {},
        state_dir=tmp_path,
        quic_host="127.0.0.1",
        quic_port=0,
        workers=3,
        auth_tokens={"tenant-a": "secret"},
    )


@pytest.fixture
def published() -> list[dict]:
    return []


@pytest.fixture
def supervisor(reactor, config, published) -> WorkerSupervisor:
    supervisor = WorkerSupervisor(
        reactor, config, command=COMMAND, environ={"HOME": "/home/x"}, observer=published.append
    )
    supervisor.startService()
    return supervisor


def fired(deferred) -> list:
    results: list = []
    deferred.addBoth(results.append)
    return results


def test_workers_start_once_worker_0_listens_and_learn_their_number_and_port(
    reactor, supervisor, config
):
    assert reactor.spawned == []

    ready = fired(supervisor.start_workers(ADDRESS))

    assert [process.args for process in reactor.spawned] == [COMMAND, COMMAND]
    for number, process in enumerate(reactor.spawned, start=1):
        start = process.start_message()
        assert start.worker == number and start.parent_pid == os.getpid()
        assert start.config.quic_port == ADDRESS.port
        assert start.config.workers == 3 and start.config.state_dir == config.state_dir
        assert start.config.auth_tokens == MappingProxyType({"tenant-a": "secret"})
        assert process.closed == [0], "stdin is closed after the start message"
        assert process.child_fds[STATUS_FD] == "r"
        assert process.env["HOME"] == "/home/x"
    assert supervisor.pids == {1: 100, 2: 101}
    first, second = reactor.spawned

    first.protocol.childDataReceived(STATUS_FD, b"ready\n")
    assert ready == []
    second.protocol.childDataReceived(STATUS_FD, b"ready\n")
    assert ready == [ADDRESS]


def test_the_start_message_round_trips_the_whole_configuration(config):
    start = WorkerStart(config, 2, 4321)
    assert WorkerStart.read(io.BytesIO(start.encode())) == start


def test_workers_import_this_runtara_first():
    environ = worker_environment({"PYTHONPATH": "/elsewhere", "LANG": "C"})

    first, rest = environ["PYTHONPATH"].split(os.pathsep, 1)
    assert (Path(first) / "runtara" / "worker.py").is_file()
    assert rest == "/elsewhere" and environ["LANG"] == "C"


def test_a_worker_that_ends_is_started_again_after_a_delay_that_grows(reactor, supervisor):
    supervisor.start_workers(ADDRESS)
    reactor.spawned[0].end(killed())

    reactor.advance(0.99)
    assert len(reactor.spawned) == 2
    reactor.advance(0.01)
    assert len(reactor.spawned) == 3
    assert reactor.spawned[2].start_message().worker == 1
    assert supervisor.pids == {1: 102, 2: 101}

    reactor.advance(1.0)  # it dies quickly again: the next delay doubles
    reactor.spawned[2].end(killed())
    reactor.advance(1.99)
    assert len(reactor.spawned) == 3
    reactor.advance(0.01)
    assert len(reactor.spawned) == 4

    reactor.advance(60.0)  # a stable run resets the delay
    reactor.spawned[3].end(Failure(ProcessDone(0)))
    reactor.advance(1.0)
    assert len(reactor.spawned) == 5


def test_the_restart_delay_stops_growing(reactor, supervisor):
    supervisor.start_workers(ADDRESS)
    delays = []
    for _ in range(10):
        reactor.spawned[-1].end(killed())
        [restart] = [call for call in reactor.getDelayedCalls() if call.active()]
        delays.append(restart.getTime() - reactor.seconds())
        reactor.advance(delays[-1])
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == MAX_RESTART_DELAY_SECONDS


def test_stopping_sends_term_then_kill_and_restarts_nothing(reactor, supervisor):
    supervisor.start_workers(ADDRESS)
    first, second = reactor.spawned

    stopped = fired(supervisor.stopService())

    assert first.signals == ["TERM"] and second.signals == ["TERM"]
    first.end(Failure(ProcessDone(0)))
    reactor.advance(STOP_GRACE_SECONDS)
    assert first.signals == ["TERM"]
    assert second.signals == ["TERM", "KILL"]
    assert stopped == []
    second.end(killed())
    assert len(stopped) == 1
    reactor.advance(120.0)
    assert len(reactor.spawned) == 2, "nothing is restarted while stopping"


def test_a_pending_restart_is_cancelled_by_stopping(reactor, supervisor):
    supervisor.start_workers(ADDRESS)
    reactor.spawned[0].end(killed())

    supervisor.stopService()
    reactor.advance(120.0)

    assert len(reactor.spawned) == 2


def test_a_workers_log_events_are_published_with_its_number(reactor, supervisor, published):
    supervisor.start_workers(ADDRESS)
    protocol = reactor.spawned[1].protocol
    event = {
        "log_format": "connection from {peer} established",
        "peer": ("127.0.0.1", 50000),
        "log_level": LogLevel.info,
        "log_namespace": "runtara.rpc.RpcConnection",
        "log_time": 1234.5,
    }
    record = f"\x1e{eventAsJSON(event)}\n".encode()

    protocol.childDataReceived(1, record[:20])
    assert published == []
    protocol.childDataReceived(1, record[20:])

    [relayed] = published
    assert relayed["runtara_worker"] == 2
    assert relayed["log_system"] == "runtara.rpc.RpcConnection#info worker 2"
    assert relayed["log_format"] == event["log_format"] and relayed["peer"] == [
        "127.0.0.1",
        50000,
    ]
    assert relayed["log_level"] == LogLevel.info and relayed["log_time"] == 1234.5


def test_a_workers_stderr_is_logged_as_warnings(reactor, supervisor, published):
    from twisted.logger import globalLogPublisher

    warnings: list[dict] = []
    globalLogPublisher.addObserver(warnings.append)
    try:
        supervisor.start_workers(ADDRESS)
        protocol = reactor.spawned[0].protocol
        protocol.childDataReceived(2, b"Traceback (most recent call last):\n  boom")
        protocol.processEnded(killed())
    finally:
        globalLogPublisher.removeObserver(warnings.append)

    lines = [e["line"] for e in warnings if e.get("log_format") == "worker {worker}: {line}"]
    assert lines == ["Traceback (most recent call last):", "  boom"]
    assert all(e["log_level"] == LogLevel.warn for e in warnings if "line" in e)
    assert published == []
