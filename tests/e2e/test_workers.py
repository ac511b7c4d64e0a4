"""``--workers``: several reactor processes behind one UDP port, sharing one database.

The server under test is started in this process (worker 0) and starts its
other workers as real processes (``python -m runtara.worker``); their log
events reach this process's log publisher tagged ``runtara_worker``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.logger import globalLogPublisher

from runtara.sdk import InstanceClient, SdkConfig
from tests.e2e.support import persistence_of, registered, unique

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TENANT = "tenant-a"


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def worker_of_connection(events: list[dict], client_port: int) -> int | None:
    """Which worker logged the connection from ``client_port`` (0: this process)."""
    for event in events:
        if event.get("log_format") == "connection from {peer} established":
            if list(event["peer"])[1] == client_port:
                return event.get("runtara_worker", 0)
    return None


async def poll(check, what: str, timeout: float = 20.0):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, 0.05)


async def connect_on_worker(servers, core, logged, wanted: int, tries: int = 40):
    """Open connections until one is served by worker ``wanted``; that client."""
    for _ in range(tries):
        client = await servers.connect(core)
        await registered(client)
        port = client.connection.transport.getHost().port
        worker = await poll(
            lambda port=port: worker_of_connection(logged, port), "the connection's log"
        )
        if worker == wanted:
            return client
    raise AssertionError(f"no connection out of {tries} reached worker {wanted}")


@pytest_twisted.ensureDeferred
async def test_two_workers_behind_one_port_both_serve(servers, logged):
    core = await servers.start(workers=2)
    assert sorted(core.service.workers.pids) == [1]

    clients = [await connect_on_worker(servers, core, logged, wanted) for wanted in (0, 1)]

    saved = []
    for client in clients:
        instance_id = await registered(client)
        for number in range(20):
            state = f"{instance_id}/{number}".encode()
            answer = await client.call(
                "checkpoint",
                {"instance_id": instance_id, "checkpoint_id": f"cp-{number}", "state": state},
            )
            assert answer["found"] is False
            saved.append((instance_id, f"cp-{number}", state))
    persistence = persistence_of(core)
    for instance_id, checkpoint_id, state in saved:
        assert await persistence.get_checkpoint(instance_id, TENANT, checkpoint_id) == state


def worker_of_instance(events: list[dict], instance_id: str) -> int | None:
    """Which worker logged the (first) registration of ``instance_id`` (0: this process)."""
    for event in events:
        if event.get("log_format", "").startswith("instance {instance_id} of tenant"):
            if event["instance_id"] == instance_id:
                return event.get("runtara_worker", 0)
    return None


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost(servers, logged):
    from twisted.internet import reactor

    core = await servers.start(workers=2)
    supervisor = core.service.workers
    victim = supervisor.pids[1]
    config = SdkConfig(
        instance_id="unused",
        tenant_id=TENANT,
        server_port=core.port,
        ca_file=str(core.certificate_path),
        heartbeat_interval=0,
        request_timeout=1.0,
        give_up_after=60.0,
    )
    # Instances until one is served by worker 1, the one to be killed.
    clients: list[InstanceClient] = []
    served_by: list[int] = []
    while 1 not in served_by or len(clients) < 4:
        assert len(clients) < 40, f"no instance reached worker 1: {served_by}"
        client = await InstanceClient.connect(
            reactor, dataclasses.replace(config, instance_id=unique("killed"))
        )
        clients.append(client)
        served_by.append(
            await poll(
                lambda client=client: worker_of_instance(logged, client.instance_id),
                "the registration's log",
            )
        )
    acknowledged: list[tuple[str, str, bytes]] = []
    checkpoints = 40
    kill_after = 2 * len(clients)

    async def run(client: InstanceClient) -> None:
        for step in range(checkpoints):
            state = f"{client.instance_id}/{step}".encode()
            await client.checkpoint(f"cp-{step}", state)
            acknowledged.append((client.instance_id, f"cp-{step}", state))
            if len(acknowledged) == kill_after:
                os.kill(victim, signal.SIGKILL)

    try:
        await gatherResults([ensureDeferred(run(client)) for client in clients])
    finally:
        for client in clients:
            await client.close()

    assert len(acknowledged) == len(clients) * checkpoints
    for client, worker in zip(clients, served_by, strict=True):
        if worker == 1:
            assert client.session.connections >= 2, "its connection died with worker 1"
    persistence = persistence_of(core)
    for instance_id, checkpoint_id, state in acknowledged:
        assert await persistence.get_checkpoint(instance_id, TENANT, checkpoint_id) == state
    restarted = await poll(lambda: supervisor.pids.get(1), "worker 1 to be restarted")
    assert restarted != victim
    ended = [
        e for e in logged if e.get("log_format", "").startswith("worker {worker} (pid {pid}) ended")
    ]
    assert [e["pid"] for e in ended] == [victim]


@pytest_twisted.ensureDeferred
async def test_stopping_worker_0_stops_the_others(servers):
    core = await servers.start(workers=3)
    pids = dict(core.service.workers.pids)
    assert sorted(pids) == [1, 2]

    await servers.stop(core)

    for pid in pids.values():
        assert not running(pid)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@pytest_twisted.ensureDeferred
async def test_workers_die_with_a_killed_worker_0(tmp_path):
    log_path = tmp_path / "twistd.log"
    argv = [
        str(Path(sys.executable).parent / "twistd"),
        "-n",
        "--pidfile=",
        "--logfile",
        str(log_path),
        "runtara-core",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path / "state"),
        "--workers",
        "2",
        "--http-port",
        "off",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTARA_")}
    env["PYTHONPATH"] = str(REPO)
    twistd = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        log = lambda: log_path.read_text() if log_path.exists() else ""  # noqa: E731
        await poll(lambda: "with 2 worker processes" in log(), "both workers to serve", 60)
        [worker] = [int(pid) for pid in re.findall(r"worker 1 started \(pid (\d+)\)", log())]
        assert running(worker)

        twistd.send_signal(signal.SIGKILL)
        twistd.wait()

        await poll(lambda: not running(worker), "worker 1 to die with worker 0")
    finally:
        if twistd.poll() is None:
            twistd.kill()
            twistd.wait()
