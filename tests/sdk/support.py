"""Real processes for the SDK's end-to-end tests: a runtara-core server
(``twistd -n runtara-core``) and workflow scripts (``tests/sdk/workflows``).

Everything waits by polling with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from runtara.certificate import fingerprint_of
from runtara.database_url import embedded_sqlite
from runtara.model import EventType, SignalType
from runtara.persistence import open_persistence
from runtara.sdk import InstanceClient, InstanceStatus, SdkConfig

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = Path(__file__).resolve().parent / "workflows"
TENANT = "sdk-tests"
LISTENING = re.compile(r"listening on QUIC (\S+):(\d+)")

_ids = itertools.count(1)
_T = TypeVar("_T")


def unique(prefix: str = "wf") -> str:
    """An instance id no other test uses."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def child_env(**variables: str) -> dict[str, str]:
    """This environment plus ``variables``, with the checkout importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNTARA_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(variables)
    return env


async def poll_until(check: Callable[[], _T], what: str, timeout: float = 20.0) -> _T:
    """Call ``check`` every 50 ms until it returns something truthy; that value."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, 0.05)


async def eventually(check: Callable[[], Awaitable[_T]], what: str, timeout: float = 20.0) -> _T:
    """Await ``check()`` every 100 ms until it gives something truthy; that value."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {value!r}")
        await deferLater(reactor, 0.1)


class Process:
    """A child process whose output goes to a log file; killed at teardown."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.running:
            self.popen.send_signal(signal.SIGKILL)
        self.reap()

    def reap(self) -> None:
        self.popen.wait()
        self._log.close()

    async def exited(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself; its exit status."""
        await poll_until(lambda: not self.running, f"{self.log_path.name} to exit", timeout)
        self.reap()
        return self.popen.returncode


class ServerProcess:
    """``twistd -n --pidfile= runtara-core`` on 127.0.0.1 with its own state directory."""

    def __init__(
        self, workdir: Path, processes: list[Process], options: tuple[str, ...] = ()
    ) -> None:
        self.options = options
        self.state_dir = workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = 0
        self.process: Process | None = None
        self._processes = processes
        self._starts = itertools.count(1)

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "tls-cert.pem"

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the server's certificate."""
        return fingerprint_of(x509.load_pem_x509_certificate(self.ca_file.read_bytes()))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start (on the port it had before, if any) and wait for its listening line."""
        argv = [
            str(Path(sys.executable).parent / "twistd"),
            "-n",
            "--pidfile=",
            "runtara-core",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http-port",
            "off",
            "--state-dir",
            str(self.state_dir),
            *self.options,
        ]
        log_path = self.workdir / f"server-{next(self._starts)}.log"
        process = Process(argv, child_env(), log_path)
        self._processes.append(process)
        self.process = process

        def listening() -> re.Match[str] | None:
            if not process.running:
                raise AssertionError(f"runtara-core exited:\n{process.log()}")
            return LISTENING.search(process.log())

        match = await poll_until(listening, "runtara-core to listen")
        self.port = int(match.group(2))

    def kill(self) -> None:
        """kill -9 the server."""
        assert self.process is not None
        self.process.kill()

    async def restart(self) -> None:
        """kill -9, then start again on the same port and state directory."""
        self.kill()
        await self.start()

    def workflow_env(self, instance_id: str, **variables: str) -> dict[str, str]:
        """The environment an engine's launcher gives a workflow of this server."""
        launcher = {
            "RUNTARA_INSTANCE_ID": instance_id,
            "RUNTARA_TENANT_ID": TENANT,
            "RUNTARA_SERVER_ADDR": self.address,
            "RUNTARA_CA_FILE": str(self.ca_file),
            "RUNTARA_HEARTBEAT_INTERVAL_MS": "500",
        }
        return child_env(**{**launcher, **variables})

    async def status(self, instance_id: str) -> InstanceStatus:
        """``get_instance_status`` of ``instance_id``, asked by a watcher instance."""
        from twisted.internet import reactor

        config = SdkConfig(
            instance_id=unique("watcher"),
            tenant_id=TENANT,
            server_port=self.port,
            ca_file=str(self.ca_file),
            heartbeat_interval=0,
            give_up_after=15.0,
        )
        client = await InstanceClient.connect(reactor, config)
        try:
            return await client.get_instance_status(instance_id)
        finally:
            await client.close()

    async def wait_for_status(
        self, instance_id: str, expected: str, timeout: float = 20.0
    ) -> InstanceStatus:
        """Poll ``get_instance_status`` until the instance is ``expected``."""

        async def check() -> InstanceStatus | None:
            status = await self.status(instance_id)
            return status if status.status.value == expected else None

        return await eventually(check, f"{instance_id} to become {expected}", timeout)

    async def send_signal(self, instance_id: str, signal_type: str, payload: bytes = b"") -> None:
        """What ``runtara signal ID TYPE`` does: write the signal to the shared database."""
        await self._with_persistence(
            lambda persistence: persistence.send_signal(
                instance_id, SignalType(signal_type), payload
            )
        )

    async def send_custom_signal(self, instance_id: str, name: str, payload: bytes) -> None:
        """What ``runtara custom-signal ID CP`` does."""
        await self._with_persistence(
            lambda persistence: persistence.send_custom_signal(instance_id, name, payload)
        )

    async def events(self, instance_id: str, event_type: str | None = None) -> list[Any]:
        """The instance's events, newest first, as ``runtara events list``."""
        return await self._with_persistence(
            lambda persistence: persistence.list_events(
                instance_id, None if event_type is None else EventType(event_type), None, 100, 0
            )
        )

    async def checkpoint(self, instance_id: str, checkpoint_id: str) -> bytes | None:
        """The stored state of a checkpoint (None if absent), as ``runtara checkpoints get``."""
        return await self._with_persistence(
            lambda persistence: persistence.get_checkpoint(instance_id, TENANT, checkpoint_id)
        )

    async def _with_persistence(self, operation: Callable[[Any], Any]) -> Any:
        from twisted.internet import reactor

        persistence = open_persistence(embedded_sqlite(self.state_dir), reactor, reactor)
        await persistence.start()
        try:
            return await operation(persistence)
        finally:
            await persistence.close()


class WorkflowRun:
    """One instance run by a test workflow script, possibly over several processes."""

    def __init__(
        self,
        server: ServerProcess,
        workdir: Path,
        processes: list[Process],
        plan: list[dict[str, Any]],
        script: str = "scripted.py",
    ) -> None:
        self.server = server
        self.instance_id = unique()
        self.journal_path = workdir / f"{self.instance_id}.journal"
        self.journal_path.touch()
        self.plan = plan
        self.script = script
        self.workdir = workdir
        self.process: Process | None = None
        self._processes = processes
        self._starts = itertools.count(1)

    def start(self, **variables: str) -> Process:
        """Start (or start again) the workflow process for this instance."""
        env = self.server.workflow_env(
            self.instance_id,
            WORKFLOW_PLAN=json.dumps(self.plan),
            WORKFLOW_JOURNAL=str(self.journal_path),
            **variables,
        )
        log_path = self.workdir / f"{self.instance_id}-{next(self._starts)}.log"
        process = Process([sys.executable, str(WORKFLOWS / self.script)], env, log_path)
        self._processes.append(process)
        self.process = process
        return process

    def journal(self) -> list[str]:
        return self.journal_path.read_text().splitlines()

    def count(self, *words: str) -> int:
        """How many journal lines start with ``words``."""
        return sum(1 for line in self.journal() if line.split()[: len(words)] == list(words))

    async def reached(self, *words: str, times: int = 1, timeout: float = 20.0) -> None:
        """Wait until the journal has ``times`` lines starting with ``words``."""

        def check() -> bool:
            if self.process is not None and not self.process.running:
                if self.count(*words) >= times:
                    return True
                raise AssertionError(
                    f"workflow exited before {' '.join(words)!r}:\n{self.process.log()}"
                )
            return self.count(*words) >= times

        await poll_until(check, f"journal line {' '.join(words)!r}", timeout)

    async def exited(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return await self.process.exited(timeout)

    def logs(self) -> str:
        """Every log of this instance's processes, for assertion messages."""
        parts = sorted(self.workdir.glob(f"{self.instance_id}-*.log"))
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')}" for path in parts)


def open_quic_clients(reactor: Any) -> list[Any]:
    """The SDK's QUIC client connections whose UDP port is open in this process."""
    from runtara.quic.client import QuicClientConnection

    return [
        reader.protocol
        for reader in reactor.getReaders()
        if isinstance(getattr(reader, "protocol", None), QuicClientConnection)
    ]
