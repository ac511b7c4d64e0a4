"""PostgreSQL going away under live QUIC traffic, and two runtara-core
processes sharing one database (issue: PostgreSQL persistence)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList, ensureDeferred

from runtara.client import RemoteError, RuntaraClient
from tests.e2e.support import registered, unique
from tests.pg import create_database, postgres_marks, run_sql, with_connection

pytestmark = [pytest.mark.e2e, *postgres_marks()]

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on QUIC 127\.0\.0\.1:([0-9]+)")


async def pause(seconds):
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


async def terminate_backends(database):
    """Kill every backend connected to the test database (what a failover does)."""
    from twisted.internet import reactor

    sql = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database.name}' AND pid <> pg_backend_pid()"
    )
    [(killed,)] = await with_connection(
        database.server, reactor, lambda connection: run_sql(connection, sql)
    )
    return killed


async def until_it_succeeds(call, timeout=15.0):
    """Retry a call that fails with retryable errors, as a client would."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while True:
        try:
            return await call()
        except RemoteError as error:
            assert error.retryable, error
            assert reactor.seconds() < deadline, f"still failing: {error}"
            await pause(0.1)


@pytest.fixture
def database_url():
    """These tests start their servers on the ``database`` below, never the default."""
    return None


@pytest_twisted.async_yield_fixture
async def database():
    from twisted.internet import reactor

    database = await create_database(reactor)
    yield database
    await database.drop()


@pytest_twisted.ensureDeferred
async def test_killed_backends_fail_calls_retryably_and_the_server_recovers(servers, database):
    core = await servers.start(database_url=database.dsn, db_pool_size=4)
    client = await servers.connect(core)
    instance_id = await registered(client)

    def checkpoint(number):
        return ensureDeferred(
            client.call(
                "checkpoint",
                {
                    "instance_id": instance_id,
                    "checkpoint_id": f"cp-{number}",
                    "state": f"state-{number}".encode(),
                },
            )
        )

    in_flight = [checkpoint(number) for number in range(60)]
    killed = await terminate_backends(database)
    assert killed >= 1
    results = await DeferredList(in_flight, consumeErrors=True)

    failures = [result for ok, result in results if not ok]
    for failure in failures:
        error = failure.value
        assert isinstance(error, RemoteError), failure
        assert (error.code, error.kind, error.retryable) == (
            "CHECKPOINT_ERROR",
            "DATABASE_ERROR",
            True,
        )
        assert "SELECT" not in error.message and "state-" not in error.message

    # Every call eventually succeeds unchanged; what was stored is exactly what was sent.
    for number in range(60):
        answer = await until_it_succeeds(lambda number=number: checkpoint(number))
        assert answer["state"] in (b"", f"state-{number}".encode())
        stored = await client.call(
            "get_checkpoint", {"instance_id": instance_id, "checkpoint_id": f"cp-{number}"}
        )
        assert stored == {"found": True, "state": f"state-{number}".encode()}
    assert (await client.call("health"))["database"] == "ok"
    [(rows,)] = await database.execute(
        f"SELECT count(*) FROM checkpoints WHERE instance_id = '{instance_id}'"
    )
    assert rows == 60


async def start_twistd(tmp_path: Path, dsn: str):
    """A second runtara-core in its own process; returns (process, port, cafile)."""
    state = tmp_path / "second-server"
    log = tmp_path / "second-server.log"
    command = [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
        "-n",
        "--pidfile=",
        "runtara-core",
        "--host=127.0.0.1",
        "--port=0",
        "--http-port=off",
        f"--state-dir={state}",
        f"--database={dsn}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={"PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    for _ in range(300):
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return process, int(match.group(1)), state / "tls-cert.pem"
        assert process.poll() is None, log.read_text()
        await pause(0.05)
    process.kill()
    raise AssertionError(f"second server never listened:\n{log.read_text()}")


@pytest_twisted.ensureDeferred
async def test_two_server_processes_share_checkpoints_without_losing_or_duplicating(
    servers, database, tmp_path
):
    from twisted.internet import reactor

    local = await servers.start(database_url=database.dsn, max_concurrent_instances=64)
    process, port, cafile = await start_twistd(tmp_path, database.dsn)
    try:
        first = await servers.connect(local)
        second = await RuntaraClient.connect(reactor, "127.0.0.1", port, cafile=str(cafile))
        servers.clients.append(second)
        instances = [unique("shared") for _ in range(8)]
        for instance_id in instances:
            await registered(first, instance_id)
            await registered(second, instance_id)

        calls = []
        for instance_id in instances:
            for number in range(15):
                for client, name in ((first, "first"), (second, "second")):
                    fields = {
                        "instance_id": instance_id,
                        "checkpoint_id": f"cp-{number}",
                        "state": f"{name}-{number}".encode(),
                    }
                    calls.append(
                        (instance_id, number, ensureDeferred(client.call("checkpoint", fields)))
                    )
        answers = {}
        for instance_id, number, call in calls:
            answers.setdefault((instance_id, number), []).append(await call)

        for (_instance_id, number), pair in answers.items():
            assert sorted(answer["found"] for answer in pair) == [False, True]
            stored = next(answer["state"] for answer in pair if answer["found"])
            assert stored in (f"first-{number}".encode(), f"second-{number}".encode())
        [(rows, distinct)] = await database.execute(
            "SELECT count(*), count(DISTINCT (instance_id, checkpoint_id)) FROM checkpoints"
        )
        assert rows == distinct == len(instances) * 15
    finally:
        process.terminate()
        process.wait(timeout=30)
