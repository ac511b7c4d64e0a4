"""PostgreSQL provider under failure: lost backends, dangling transactions, races.

These run against the server of ``RUNTARA_TEST_POSTGRES_URL`` (see
``tests/pg.py``), each on a database of its own. The provider's clock is a
``task.Clock`` (it only stamps rows); connections and reconnection timers run
on the real reactor. Waiting on the server (a backend to block, to die, to
come back) polls with a deadline.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.logger import globalLogPublisher

from runtara.errors import DatabaseError
from runtara.model import SignalType, Status
from runtara.persistence.migrations import LEDGER_TABLE, load_migrations
from runtara.persistence.postgresql import APPLICATION_NAME, PostgreSQLPersistence
from tests.pg import PostgreSQLDatabase, connect, create_database, require_server

pytestmark = pytest.mark.postgres

_T = TypeVar("_T")

TENANT = "tenant-a"
DEADLINE_S = 20.0
POLL_S = 0.05
LOG_NAMESPACE = "runtara.persistence.postgresql"


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def pg_server() -> str:
    """The server URL; skips here, synchronously, when there is no server."""
    return require_server()


@pytest_twisted.async_yield_fixture
async def pg_database(pg_server: str) -> AsyncIterator[PostgreSQLDatabase]:
    from twisted.internet import reactor

    database = await create_database(reactor)
    yield database
    await database.drop()


class Providers:
    """Builds providers on one database and closes them all at the end."""

    def __init__(self, database: PostgreSQLDatabase, clock: task.Clock) -> None:
        self.database = database
        self.clock = clock
        self.opened: list[PostgreSQLPersistence] = []

    async def __call__(self, *, pool_size: int = 4, migrate: bool = True) -> PostgreSQLPersistence:
        provider = self.database.provider(self.clock, pool_size=pool_size)
        self.opened.append(provider)
        await provider.start()
        if migrate:
            await provider.migrate()
        return provider

    async def close_all(self) -> None:
        for provider in self.opened:
            await provider.close()


@pytest_twisted.async_yield_fixture
async def providers(pg_database: PostgreSQLDatabase, clock: task.Clock) -> AsyncIterator[Providers]:
    made = Providers(pg_database, clock)
    yield made
    await made.close_all()


@pytest.fixture
def log_events() -> Any:
    """Every event logged during the test (``ours`` picks the provider's)."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def ours(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event.get("log_namespace") == LOG_NAMESPACE]


def _is_error(event: dict[str, Any]) -> bool:
    """A logged failure, also one from legacy ``log.err`` (e.g. the reactor's "Unhandled Error")."""
    return "log_failure" in event or bool(event.get("isError"))


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _pause() -> None:
    await task.deferLater(_reactor(), POLL_S, lambda: None)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; fail after ``DEADLINE_S``."""
    deadline = _reactor().seconds() + DEADLINE_S
    while not await check():
        if _reactor().seconds() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        await _pause()


async def until_succeeds(call: Callable[[], Awaitable[_T]], what: str) -> _T:
    """Retry ``call`` while it fails with a retryable ``DatabaseError``."""
    deadline = _reactor().seconds() + DEADLINE_S
    while True:
        try:
            return await call()
        except DatabaseError as error:
            assert error.retryable, error
            if _reactor().seconds() > deadline:
                raise
        await _pause()


async def sql(database: PostgreSQLDatabase, statement: str) -> list[tuple[Any, ...]]:
    """Run ``statement`` out of band, on a connection of its own."""
    return await database.execute(statement)


async def pool_backends(database: PostgreSQLDatabase, where: str = "true") -> set[int]:
    rows = await sql(
        database,
        "SELECT pid FROM pg_stat_activity"
        f" WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}'"
        f" AND {where}",
    )
    return {pid for (pid,) in rows}


async def terminate_pool_backends(database: PostgreSQLDatabase) -> int:
    """``pg_terminate_backend`` every session the providers opened on ``database``."""
    rows = await sql(
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = current_database() AND application_name = '{APPLICATION_NAME}'",
    )
    return len(rows)


def reconnected(events: list[dict[str, Any]]) -> set[str]:
    return {
        event["connection"]
        for event in ours(events)
        if event.get("log_format", "").endswith("re-established")
    }


async def settle(deferreds: list[Any]) -> list[tuple[bool, Any]]:
    """Wait for every Deferred; (True, result) or (False, exception) per call."""
    results = await DeferredList(deferreds, consumeErrors=True)
    return [(ok, value if ok else value.value) for ok, value in results]


def assert_retryable_database_errors(outcomes: list[tuple[bool, Any]]) -> None:
    for ok, value in outcomes:
        if not ok:
            assert isinstance(value, DatabaseError), repr(value)
            assert value.retryable, value.message


def assert_no_sql(error: DatabaseError) -> None:
    for word in ("SELECT", "INSERT", "UPDATE", "DELETE", "instances", "%s"):
        assert word not in error.message


# -- lost backends ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_calls_in_flight_when_backends_are_terminated_fail_retryable_and_write_nothing(
    providers: Providers, pg_database: PostgreSQLDatabase
) -> None:
    provider = await providers(pool_size=4)
    others = [f"i-{n}" for n in range(12)]
    for instance_id in ["i-blocked", *others]:
        await provider.register_instance(instance_id, TENANT, None)
    await provider.send_custom_signal("i-blocked", "cp", b"signal")
    # Hold the custom signal's row: the checkpoint below stores its row and
    # moves the instance's current checkpoint, then waits to consume it.
    holder = await connect(pg_database.dsn, _reactor())
    try:
        await holder.runOperation("BEGIN")
        await holder.runQuery(
            "SELECT 1 FROM custom_signals WHERE instance_id = 'i-blocked' FOR UPDATE"
        )
        blocked = provider.save_checkpoint("i-blocked", TENANT, "cp", b"state")
        traffic = [provider.save_checkpoint(i, TENANT, "cp", i.encode()) for i in others]
        await wait_until(
            lambda: _has_backends(pg_database, "wait_event_type = 'Lock'"),
            "the checkpoint to wait for the row lock",
        )

        assert await terminate_pool_backends(pg_database) == 4

        with pytest.raises(DatabaseError) as lost:
            await blocked
        assert lost.value.retryable
        assert lost.value.details == "connection lost"
        assert_no_sql(lost.value)
        assert_retryable_database_errors(await settle(traffic))
    finally:
        await holder.runOperation("ROLLBACK")
        holder.close()

    assert await sql(
        pg_database,
        "SELECT i.checkpoint_id, (SELECT count(*) FROM checkpoints c"
        " WHERE c.instance_id = i.instance_id), (SELECT count(*) FROM custom_signals s"
        " WHERE s.instance_id = i.instance_id) FROM instances i WHERE instance_id = 'i-blocked'",
    ) == [(None, 0, 1)]
    assert await sql(
        pg_database,
        "SELECT count(*) FROM instances i WHERE (i.checkpoint_id IS NULL) <>"
        " NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.instance_id = i.instance_id)",
    ) == [(0,)]
    result = await until_succeeds(
        lambda: provider.save_checkpoint("i-blocked", TENANT, "cp", b"state"),
        "the provider to work again",
    )
    assert (result.found, result.custom_signal.payload) == (False, b"signal")
    assert await provider.check_health()


async def _has_backends(database: PostgreSQLDatabase, where: str) -> bool:
    return bool(await pool_backends(database, where))


@pytest_twisted.ensureDeferred
async def test_idle_connections_the_server_closes_are_replaced_without_failing_calls(
    providers: Providers, pg_database: PostgreSQLDatabase, log_events: list[dict[str, Any]]
) -> None:
    provider = await providers(pool_size=4)
    before = await pool_backends(pg_database)
    assert len(before) == 4

    assert await terminate_pool_backends(pg_database) == 4
    await wait_until(
        lambda: _all_reconnected(log_events, 4), "every connection to be re-established"
    )

    after = await pool_backends(pg_database)
    assert len(after) == 4 and not after & before
    results = await gatherResults(
        [provider.register_instance(f"i-{n}", TENANT, None) for n in range(16)]
    )
    assert all(registration.success for registration in results)
    assert not [event for event in log_events if _is_error(event)]
    lost = [event for event in ours(log_events) if "lost" in event["log_format"]]
    assert {event["reason"] for event in lost} == {"connection lost"}


async def _all_reconnected(events: list[dict[str, Any]], count: int) -> bool:
    return len(reconnected(events)) == count


# -- the transaction guard -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_connection_left_inside_a_transaction_is_discarded(
    providers: Providers, pg_database: PostgreSQLDatabase, log_events: list[dict[str, Any]]
) -> None:
    provider = await providers(pool_size=1)
    (old_backend,) = await pool_backends(pg_database)

    # Reach into the pool to leave its only connection inside a transaction.
    await provider.engine.pool.runOperation("BEGIN")

    assert any(event.get("status") == "in transaction" for event in ours(log_events))
    await wait_until(lambda: _all_reconnected(log_events, 1), "the discarded connection")
    await provider.register_instance("i-1", TENANT, None)
    (new_backend,) = await pool_backends(pg_database)
    assert new_backend != old_backend
    assert await sql(pg_database, "SELECT status FROM instances") == [("running",)]
    assert not await pool_backends(pg_database, "state LIKE 'idle in transaction%'")


@pytest_twisted.ensureDeferred
async def test_an_interaction_that_does_not_await_its_queries_is_rolled_back_and_discarded(
    providers: Providers, pg_database: PostgreSQLDatabase, log_events: list[dict[str, Any]]
) -> None:
    provider = await providers(pool_size=1)

    async def careless(transaction: Any) -> None:
        # The stack probe's trap: a second execute while the first (kept slow
        # on purpose) is still underway; the rollback then fails as well.
        await transaction.rows("SELECT 1")
        transaction._cursor.execute(
            "WITH slow AS (SELECT pg_sleep(0.5))"
            " INSERT INTO instances (instance_id, tenant_id, status, created_at)"
            " SELECT 'ghost', 't', 'pending', 0 FROM slow"
        )
        await transaction.execute("SELECT 1")

    with pytest.raises(DatabaseError) as failed:
        await provider._transact("careless", True, careless, ())

    assert failed.value.retryable
    await wait_until(lambda: _all_reconnected(log_events, 1), "the connection to be replaced")
    await until_succeeds(
        lambda: provider.register_instance("i-1", TENANT, None), "the provider to work again"
    )
    assert await sql(pg_database, "SELECT instance_id FROM instances") == [("i-1",)]
    assert not await pool_backends(pg_database, "state LIKE 'idle in transaction%'")


# -- two processes on one database -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_first_checkpoints_from_two_pools_store_one_state(
    providers: Providers, pg_database: PostgreSQLDatabase
) -> None:
    first = await providers(pool_size=4)
    second = await providers(pool_size=4, migrate=False)
    instances = [f"i-{n}" for n in range(8)]
    for instance_id in instances:
        await first.register_instance(instance_id, TENANT, None)

    calls = [
        (instance_id, (first, second)[k % 2], f"{instance_id}/state-{k}".encode())
        for k in range(6)
        for instance_id in instances
    ]
    results = await gatherResults(
        [provider.save_checkpoint(i, TENANT, "cp", state) for i, provider, state in calls]
    )

    stored = dict(
        await sql(
            pg_database, "SELECT instance_id, state FROM checkpoints WHERE checkpoint_id = 'cp'"
        )
    )
    assert sorted(stored) == instances
    for instance_id in instances:
        answers = [
            (result.found, result.state, state)
            for (i, _, state), result in zip(calls, results, strict=True)
            if i == instance_id
        ]
        winners = [state for found, _, state in answers if not found]
        assert len(winners) == 1
        assert stored[instance_id] == winners[0]
        assert all(answer == stored[instance_id] for found, answer, _ in answers if found)
    assert await sql(pg_database, "SELECT count(*) FROM instances WHERE checkpoint_id = 'cp'") == [
        (len(instances),)
    ]


@pytest_twisted.ensureDeferred
async def test_registrations_signals_and_acks_race_safely_across_two_pools(
    providers: Providers, pg_database: PostgreSQLDatabase
) -> None:
    first = await providers(pool_size=4)
    second = await providers(pool_size=4, migrate=False)
    pair = (first, second)

    registrations = await gatherResults(
        [pair[k % 2].register_instance("i-new", TENANT, None) for k in range(8)]
    )
    assert all(registration.success for registration in registrations)
    assert await sql(
        pg_database,
        "SELECT (SELECT count(*) FROM instances),"
        " (SELECT count(*) FROM events WHERE event_type = 'started')",
    ) == [(1, 8)]

    await first.send_custom_signal("i-new", "cp", b"once")
    polls = await gatherResults([pair[k % 2].poll_signals("i-new", TENANT, "cp") for k in range(8)])
    assert [signals.custom_signal.payload for signals in polls if signals.custom_signal] == [
        b"once"
    ]

    await first.send_signal("i-new", SignalType.CANCEL, b"")
    acks = await gatherResults(
        [pair[k % 2].acknowledge_signal("i-new", TENANT, SignalType.CANCEL, True) for k in range(8)]
    )
    assert [ack.success for ack in acks].count(True) == 1
    assert {ack.status for ack in acks} == {Status.CANCELLED}


@pytest_twisted.ensureDeferred
async def test_concurrent_migrations_on_a_fresh_database_apply_once(
    providers: Providers, pg_database: PostgreSQLDatabase
) -> None:
    latest = load_migrations("postgresql")[-1].version
    started = [await providers(pool_size=2, migrate=False) for _ in range(4)]

    versions = await gatherResults([provider.migrate() for provider in started])

    assert versions == [latest] * 4
    ledger = await sql(pg_database, f"SELECT version, name FROM {LEDGER_TABLE} ORDER BY version")
    assert ledger == [(m.version, m.name) for m in load_migrations("postgresql")]
    assert await sql(pg_database, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [
        (0,)
    ]


# -- errors ----------------------------------------------------------------------------------


def _closed_port() -> int:
    """A local TCP port where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest_twisted.ensureDeferred
async def test_start_against_a_port_where_nothing_listens_fails_clearly_without_the_password(
    clock: task.Clock,
) -> None:
    port = _closed_port()
    provider = PostgreSQLPersistence(
        f"postgresql://runtara:hunter2-secret@127.0.0.1:{port}/runtara",
        clock,
        pool_size=2,
        reactor=_reactor(),
    )

    with pytest.raises(DatabaseError) as refused:
        await provider.start()

    error = refused.value
    assert error.retryable
    assert error.operation == "start"
    assert error.message == (
        "Database error during 'start': cannot connect to PostgreSQL at"
        f" 127.0.0.1:{port} (database 'runtara', user 'runtara'): connection refused"
    )
    for shown in (error.message, error.details, str(error), repr(error), repr(provider)):
        assert "hunter2" not in shown
    assert not await provider.check_health()
    with pytest.raises(DatabaseError, match="database is not open"):
        await provider.get_instance_status("i-1", TENANT)
    await provider.close()


@pytest_twisted.ensureDeferred
async def test_start_on_a_database_that_does_not_exist_fails_once_without_reconnecting(
    pg_server: str, clock: task.Clock, log_events: list[dict[str, Any]]
) -> None:
    missing = urlsplit(pg_server)._replace(path="/runtara_no_such_database").geturl()
    provider = PostgreSQLPersistence(missing, clock, pool_size=8, reactor=_reactor())

    with pytest.raises(DatabaseError) as refused:
        await provider.start()

    assert "(database 'runtara_no_such_database'" in refused.value.message
    assert refused.value.message.endswith(": database or role does not exist")
    assert not refused.value.retryable
    assert ours(log_events) == [], "the failure is the caller's to report, once"
    assert not [event for event in log_events if _is_error(event)]
    await provider.close()


@pytest_twisted.ensureDeferred
async def test_start_gives_up_on_a_server_that_never_answers(clock: task.Clock) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        provider = PostgreSQLPersistence(
            f"postgresql://runtara@127.0.0.1:{port}/runtara?connect_timeout=1",
            clock,
            pool_size=2,
            reactor=_reactor(),
        )

        with pytest.raises(DatabaseError) as timed_out:
            await provider.start()

    assert timed_out.value.retryable
    assert timed_out.value.message.endswith(": no connection within 1 s")


@pytest_twisted.ensureDeferred
async def test_a_malformed_connection_string_fails_start_without_echoing_it(
    clock: task.Clock,
) -> None:
    provider = PostgreSQLPersistence("password=hunter2 nonsense", clock, reactor=_reactor())

    with pytest.raises(DatabaseError) as refused:
        await provider.start()

    assert not refused.value.retryable
    assert "invalid connection string" in refused.value.message
    assert "hunter2" not in refused.value.message + repr(provider)


@pytest_twisted.ensureDeferred
async def test_driver_errors_become_database_errors_without_sql(
    providers: Providers, pg_database: PostgreSQLDatabase
) -> None:
    provider = await providers(pool_size=1)
    await provider.register_instance("i-1", TENANT, None)
    await sql(pg_database, "DROP TABLE retry_attempts")

    with pytest.raises(DatabaseError) as failed:
        await provider.record_retry_attempt("i-1", TENANT, "cp", 1, None, "boom")

    assert not failed.value.retryable
    assert failed.value.details == "schema or query error"
    assert_no_sql(failed.value)
    assert (await provider.get_instance_status("i-1", TENANT)).status is Status.RUNNING


# -- a whole-cluster restart -------------------------------------------------------------------


def _local_cluster(url: str) -> tuple[str, str] | None:
    """(version, name) of the local cluster serving ``url``, if pg_ctlcluster can restart it."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", None) or os.geteuid() != 0:
        return None
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    ).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == str(parts.port or 5432) and fields[3] == "online":
            return fields[0], fields[1]
    return None


async def _restart_cluster(version: str, name: str) -> None:
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(
        shutil.which("pg_ctlcluster") or "pg_ctlcluster",
        ("--skip-systemctl-redirect", version, name, "restart"),
        env=dict(os.environ),
        reactor=_reactor(),
    )
    assert code == 0, (out + err).decode(errors="replace")


class _CheckpointWriter:
    """Saves cp-0, cp-1, ... for one instance, retrying a cp until it is stored."""

    def __init__(self, provider: PostgreSQLPersistence, instance_id: str) -> None:
        self.provider = provider
        self.instance_id = instance_id
        self.stored = 0
        self.failures: list[BaseException] = []
        self.running = True

    async def run(self) -> None:
        while self.running:
            try:
                await self.provider.save_checkpoint(
                    self.instance_id, TENANT, f"cp-{self.stored}", b"state"
                )
            except DatabaseError as error:
                self.failures.append(error)
                await _pause()
            else:
                self.stored += 1


@pytest.mark.pg_restart
@pytest_twisted.ensureDeferred
async def test_the_pool_recovers_when_the_whole_cluster_restarts_mid_traffic(
    providers: Providers, pg_database: PostgreSQLDatabase, pg_server: str
) -> None:
    cluster = _local_cluster(pg_server)
    if cluster is None:
        pytest.skip("needs a local cluster that pg_ctlcluster can restart (as root)")
    provider = await providers(pool_size=4)
    writers = []
    for n in range(6):
        await provider.register_instance(f"i-{n}", TENANT, None)
        writers.append(_CheckpointWriter(provider, f"i-{n}"))
    running = [Deferred.fromCoroutine(writer.run()) for writer in writers]
    await wait_until(lambda: _wrote_some(writers), "traffic to flow")

    await _restart_cluster(*cluster)
    marks = [writer.stored for writer in writers]
    await wait_until(
        lambda: _wrote_more(writers, marks), "every writer to store again after the restart"
    )
    for writer in writers:
        writer.running = False
    await gatherResults(running)

    assert any(writer.failures for writer in writers)
    for writer in writers:
        assert all(
            isinstance(error, DatabaseError) and error.retryable for error in writer.failures
        )
        rows = await sql(
            pg_database,
            "SELECT c.checkpoint_id, i.checkpoint_id FROM checkpoints c JOIN instances i"
            f" USING (instance_id) WHERE instance_id = '{writer.instance_id}'",
        )
        assert sorted(cp for cp, _ in rows) == sorted(f"cp-{n}" for n in range(writer.stored))
        assert {current for _, current in rows} == {f"cp-{writer.stored - 1}"}
    assert await provider.check_health()


async def _wrote_some(writers: list[_CheckpointWriter]) -> bool:
    return all(writer.stored > 0 for writer in writers)


async def _wrote_more(writers: list[_CheckpointWriter], marks: list[int]) -> bool:
    return all(writer.stored > mark for writer, mark in zip(writers, marks, strict=True))
