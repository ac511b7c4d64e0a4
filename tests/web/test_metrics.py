"""``/metrics`` after a known load: parsed with prometheus_client's own parser."""

from __future__ import annotations

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred

from tests.e2e.support import persistence_of, registered, remote_error, unique

pytestmark = pytest.mark.e2e


async def scrape(api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    response = await api.get("/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_twisted.ensureDeferred
async def test_counters_equal_the_operations_sent(api, connect, core):
    client = await connect()
    ids = [await registered(client) for _ in range(3)]
    for instance_id in ids:
        for step in ("a", "b"):
            await client.call(
                "checkpoint", {"instance_id": instance_id, "checkpoint_id": step, "state": b"s"}
            )
    await client.call("get_instance_status", {"instance_id": ids[0]})
    error = await remote_error(client.call("get_checkpoint", {"instance_id": ids[0]}))
    assert error.kind == "VALIDATION_ERROR"
    await remote_error(client.call("no_such_operation", {}))

    samples = await scrape(api)

    def operations(name, outcome="ok"):
        return value(samples, "runtara_operations_total", operation=name, outcome=outcome)

    assert operations("register_instance") == 3
    assert operations("checkpoint") == 6
    assert operations("get_instance_status") == 1
    assert operations("get_checkpoint", "validation_error") == 1
    assert operations("invalid", "unknown_operation") == 1
    latency = "runtara_operation_duration_seconds_count"
    assert value(samples, latency, operation="checkpoint") == 6
    assert value(samples, latency, operation="register_instance") == 3
    transactions = "runtara_db_transaction_duration_seconds_count"
    assert value(samples, transactions, operation="save_checkpoint") == 6
    assert value(samples, transactions, operation="register_instance") == 3
    assert value(samples, "runtara_quic_connections_open") == 1
    assert value(samples, "runtara_instances", status="running") == 3
    assert value(samples, "runtara_instances", status="completed") == 0


@pytest_twisted.ensureDeferred
async def test_sqlite_batch_sizes_count_every_committed_operation(api, connect, core):
    client = await connect()
    await registered(client)

    samples = await scrape(api)

    if persistence_of(core).dialect != "sqlite":
        assert value(samples, "runtara_sqlite_group_commit_batch_size_count") == 0
        return
    batches = value(samples, "runtara_sqlite_group_commit_batch_size_count")
    operations = value(samples, "runtara_sqlite_group_commit_batch_size_sum")
    transactions = sum(
        count
        for (name, _), count in samples.items()
        if name == "runtara_db_transaction_duration_seconds_count"
    )
    assert 1 <= batches <= operations
    assert operations == transactions


@pytest_twisted.ensureDeferred
async def test_sleeps_held_counts_the_sleeping_calls(api, connect, core):
    from twisted.internet import reactor

    client = await connect()
    instance_id = await registered(client)
    fields = {"instance_id": instance_id, "checkpoint_id": "nap", "state": b""}
    fields["duration_ms"] = 60_000
    sleeping = Deferred.fromCoroutine(client.call("sleep", fields))
    sleeping.addErrback(lambda _: None)

    deadline = reactor.seconds() + 5
    samples = await scrape(api)
    while value(samples, "runtara_sleeps_held") != 1 and reactor.seconds() < deadline:
        samples = await scrape(api)

    assert value(samples, "runtara_sleeps_held") == 1


@pytest_twisted.ensureDeferred
async def test_instances_by_status_are_read_from_the_database(api, core):
    await persistence_of(core).create_instance(unique(), "t")

    samples = await scrape(api)

    assert value(samples, "runtara_instances", status="pending") == 1
    assert {labels[0][1] for (name, labels) in samples if name == "runtara_instances"} == {
        "pending",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
    }
