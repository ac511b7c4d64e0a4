"""One more reactor process of runtara-core: ``python -m runtara.worker``.

Started by worker 0's ``WorkerSupervisor`` (``runtara-core --workers N``),
never by hand. The conversation with the supervisor:

- stdin: one ``WorkerStart`` (pickled: the configuration with the port
  worker 0 bound, this worker's number, the supervisor's pid), then EOF;
- stdout: every log event, one JSON record per line, which the supervisor
  publishes in its own log tagged with the worker's number;
- fd 3: the line ``ready`` once this worker serves the port.

The worker runs the core protocol server only (``build_service`` with its
worker number: database and listener, nothing that belongs to worker 0),
on its own socket of the shared port. It leaves the supervisor's process
group, so a Ctrl-C at the terminal reaches the supervisor alone, which then
stops its workers; SIGTERM stops it cleanly (calls in flight commit and
answer first), and on Linux it gets SIGTERM too when the supervisor dies
(the parent-death signal), so no worker outlives it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pickle
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import IO, Any

from runtara.config import Config

__all__ = ["READY", "STATUS_FD", "WorkerStart", "main"]

STATUS_FD = 3
"""The worker's end of the status pipe."""

READY = b"ready\n"
"""What a worker writes on the status pipe once it serves."""

EXIT_START_FAILED = 1
"""A worker's exit status when it could not start (the reason is in its log)."""

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerStart:
    """What a worker is told when it starts."""

    config: Config
    worker: int
    parent_pid: int

    def encode(self) -> bytes:
        """The message for the worker's stdin (mappings travel as dicts)."""
        values = {
            field.name: _plain(getattr(self.config, field.name))
            for field in dataclasses.fields(self.config)
        }
        return pickle.dumps({"config": values, "worker": self.worker, "parent": self.parent_pid})

    @classmethod
    def read(cls, stream: IO[bytes]) -> WorkerStart:
        """Read the message ``encode`` wrote (from the supervisor, over a private pipe)."""
        message = pickle.load(stream)
        values = {name: _frozen(value) for name, value in message["config"].items()}
        return cls(Config(**values), message["worker"], message["parent"])


def _plain(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else value


def _frozen(value: object) -> object:
    return MappingProxyType(value) if isinstance(value, dict) else value


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit("runtara worker: the supervisor is gone")


def main() -> None:
    """Run one worker until SIGTERM (or its supervisor's death)."""
    start = WorkerStart.read(sys.stdin.buffer)
    _die_with_parent(start.parent_pid)
    os.setpgid(0, 0)

    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner, jsonFileLogObserver

    from runtara.service import build_service

    sys.stdout.reconfigure(line_buffering=True)
    globalLogBeginner.beginLoggingTo(
        [jsonFileLogObserver(sys.stdout)], redirectStandardIO=False, discardBuffer=True
    )
    log = Logger(namespace="runtara.worker")
    status = os.fdopen(STATUS_FD, "wb", buffering=0)
    core = build_service(start.config, reactor, worker=start.worker)

    def serving(address: Any) -> None:
        log.info(
            "worker {worker} (pid {pid}) serving QUIC {host}:{port}",
            worker=start.worker,
            pid=os.getpid(),
            host=address.host,
            port=address.port,
        )
        status.write(READY)

    def failed(_: object) -> None:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, EXIT_START_FAILED)
        reactor.stop()

    reactor.callWhenRunning(core.startService)
    reactor.addSystemEventTrigger("before", "shutdown", core.stopService)
    core.when_ready().addCallbacks(serving, failed)
    reactor.run()


if __name__ == "__main__":
    main()
