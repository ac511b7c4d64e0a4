"""Worker 0 supervises workers 1..N-1 (``runtara-core --workers N``).

The twistd process is worker 0: it opens the database, migrates it, binds
the QUIC port (``SO_REUSEPORT``) and only then starts the other workers,
each a ``python -m runtara.worker`` process (``runtara.worker``) that binds
its own socket of the same port and serves the core protocol, on the same
database. ``WorkerSupervisor``:

- starts them with ``spawnProcess`` once worker 0 listens, and fires when
  every one of them serves;
- relays their log (JSON lines on their stdout) into its own, tagged
  ``worker <n>``;
- restarts a worker that ends, after a delay that doubles (up to a minute)
  while a worker keeps dying within ``STABLE_AFTER_SECONDS`` of its start,
  as Twisted's ``ProcessMonitor`` does;
- on shutdown sends each worker SIGTERM (a worker drains its calls, then
  closes its database), and SIGKILL to any still running after
  ``STOP_GRACE_SECONDS``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

import runtara
from runtara.config import Config
from runtara.worker import READY, STATUS_FD, WorkerStart

__all__ = ["WorkerSupervisor"]

RESTART_DELAY_SECONDS = 1.0
"""Delay before a worker that ended is started again (it doubles, see below)."""

MAX_RESTART_DELAY_SECONDS = 60.0

STABLE_AFTER_SECONDS = 10.0
"""A worker that ran this long before it ended is restarted after the first delay again."""

STOP_GRACE_SECONDS = 15.0
"""How long a worker may take to stop after SIGTERM (its drain takes at most 10 s)."""

MAX_LINE_BYTES = 1024 * 1024
"""A worker's output line is cut at this length (a worker never writes such lines)."""


def worker_command() -> list[str]:
    """How a worker process is started: this Python, ``-m runtara.worker``."""
    return [sys.executable, "-m", "runtara.worker"]


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with this very ``runtara`` package first on the import path."""
    package_root = str(Path(runtara.__file__).resolve().parent.parent)
    path = environ.get("PYTHONPATH")
    return {**environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}


class _Lines:
    """Splits a stream of bytes into lines, none longer than ``MAX_LINE_BYTES``."""

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self._deliver(line)
        if len(self._buffer) > MAX_LINE_BYTES:
            line, self._buffer = self._buffer, b""
            self._deliver(line[:MAX_LINE_BYTES])

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._deliver(line)


class _WorkerProcess(ProcessProtocol):
    """One run of worker ``index``: its output, its readiness, its end."""

    _log = Logger()

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self._stdout = _Lines(self._log_record)
        self._stderr = _Lines(self._stderr_line)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._stdout.feed(data)
        elif childFD == 2:
            self._stderr.feed(data)
        elif childFD == STATUS_FD and READY.strip() in data:
            self.supervisor._serving(self)

    def processEnded(self, reason: Failure) -> None:
        self._stdout.flush()
        self._stderr.flush()
        self.supervisor._ended(self, reason)
        self.ended.callback(None)

    def _log_record(self, line: bytes) -> None:
        text = line.lstrip(b"\x1e").decode("utf-8", errors="replace").strip()
        if not text:
            return
        try:
            event = eventFromJSON(text)
        except ValueError:
            self._stderr_line(line)
            return
        level = event.get("log_level")
        level_name = getattr(level, "name", "-")
        namespace = event.get("log_namespace", "-")
        event["log_system"] = f"{namespace}#{level_name} worker {self.index}"
        event["runtara_worker"] = self.index
        self.supervisor.observer(event)

    def _stderr_line(self, line: bytes) -> None:
        self._log.warn(
            "worker {worker}: {line}",
            worker=self.index,
            line=line.decode("utf-8", errors="replace"),
        )


class _Worker:
    """Worker ``index`` across its runs."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: _WorkerProcess | None = None
        self.transport: IProcessTransport | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.restart_delay = RESTART_DELAY_SECONDS
        self.restart: IDelayedCall | None = None
        self.kill: IDelayedCall | None = None
        self.served = False


class WorkerSupervisor(service.Service):
    """Starts, relays, restarts and stops workers 1..``config.workers``-1.

    ``reactor`` provides ``IReactorProcess`` and ``IReactorTime``;
    ``command`` and ``environ`` say how a worker process is started
    (``worker_command()`` and the environment, by default).
    """

    name = "workers"
    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        config: Config,
        *,
        command: list[str] | None = None,
        environ: Mapping[str, str] | None = None,
        observer: ILogObserver = globalLogPublisher,
    ) -> None:
        self._reactor = reactor
        self._config = config
        self._command = command if command is not None else worker_command()
        self._environ = worker_environment(os.environ if environ is None else environ)
        self.observer = observer
        self._port: int | None = None
        self._workers = [_Worker(index) for index in range(1, config.workers)]
        self._all_serving: Deferred[None] = Deferred()

    @property
    def pids(self) -> dict[int, int]:
        """Worker number to process id, for the workers running now."""
        return {
            worker.index: worker.pid
            for worker in self._workers
            if worker.transport is not None and worker.pid is not None
        }

    def start_workers(self, address: Any) -> Deferred[Any]:
        """Start every worker on ``address.port`` (worker 0's); fire with ``address``
        once all of them serve."""
        self._port = address.port
        for worker in self._workers:
            self._spawn(worker)
        ready = self._all_serving if self._workers else succeed(None)
        return ready.addCallback(lambda _: self._announce(address))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        stopping = []
        for worker in self._workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.transport is not None and worker.process is not None:
                stopping.append(worker.process.ended)
                self._signal(worker, "TERM")
                worker.kill = self._reactor.callLater(
                    STOP_GRACE_SECONDS, self._signal, worker, "KILL"
                )
        return DeferredList(stopping, consumeErrors=True)

    # -- one worker ------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        assert self._port is not None
        start = WorkerStart(
            dataclasses.replace(self._config, quic_port=self._port), worker.index, os.getpid()
        )
        process = _WorkerProcess(self, worker.index)
        transport = self._reactor.spawnProcess(
            process,
            self._command[0],
            self._command,
            env=self._environ,
            childFDs={0: "w", 1: "r", 2: "r", STATUS_FD: "r"},
        )
        worker.process, worker.transport, worker.pid = process, transport, transport.pid
        worker.started_at = self._reactor.seconds()
        transport.writeToChild(0, start.encode())
        transport.closeChildFD(0)
        self._log.info(
            "worker {worker} started (pid {pid})", worker=worker.index, pid=transport.pid
        )

    def _serving(self, process: _WorkerProcess) -> None:
        worker = self._workers[process.index - 1]
        worker.served = True
        if all(w.served for w in self._workers) and not self._all_serving.called:
            self._all_serving.callback(None)

    def _ended(self, process: _WorkerProcess, reason: Failure) -> None:
        worker = self._workers[process.index - 1]
        if worker.process is not process:
            return
        pid, worker.pid = worker.pid, None
        worker.process = worker.transport = None
        if worker.kill is not None and worker.kill.active():
            worker.kill.cancel()
        worker.kill = None
        how = "exited normally" if reason.check(ProcessDone) else reason.getErrorMessage()
        if not self.running:
            self._log.info("worker {worker} stopped: {how}", worker=worker.index, how=how)
            return
        ran = self._reactor.seconds() - worker.started_at
        if ran >= STABLE_AFTER_SECONDS:
            worker.restart_delay = RESTART_DELAY_SECONDS
        delay = worker.restart_delay
        worker.restart_delay = min(delay * 2, MAX_RESTART_DELAY_SECONDS)
        self._log.warn(
            "worker {worker} (pid {pid}) ended after {ran:.1f} s: {how}; restarting in {delay:g} s",
            worker=worker.index,
            pid=pid,
            ran=ran,
            how=how,
            delay=delay,
        )
        worker.restart = self._reactor.callLater(delay, self._restart, worker)

    def _restart(self, worker: _Worker) -> None:
        worker.restart = None
        if self.running:
            self._spawn(worker)

    def _signal(self, worker: _Worker, name: str) -> None:
        if worker.transport is None:
            return
        try:
            worker.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError) as error:
            self._log.debug("signalling worker {worker}: {error}", worker=worker.index, error=error)

    def _announce(self, address: Any) -> Any:
        self._log.info(
            "runtara-core serving QUIC {host}:{port} with {workers} worker processes",
            host=address.host,
            port=address.port,
            workers=len(self._workers) + 1,
        )
        return address
