"""``InstanceCounts``: the instances-by-status gauge is read at most every few seconds."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import task

from runtara.database_url import parse_database_url
from runtara.metrics import STATUS_REFRESH_SECONDS, InstanceCounts, Metrics
from runtara.persistence import open_persistence


def reads(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "runtara_db_transaction_duration_seconds_count", {"operation": "count_by_status"}
    )
    return value or 0.0


def gauge(metrics: Metrics, status: str) -> float | None:
    return metrics.registry.get_sample_value("runtara_instances", {"status": status})


@pytest_twisted.async_yield_fixture
async def counted(tmp_path):
    from twisted.internet import reactor

    clock = task.Clock()
    metrics = Metrics(time.monotonic)
    url = parse_database_url(f"sqlite://{tmp_path}/runtara.db")
    persistence = open_persistence(url, clock, reactor, metrics=metrics)
    await persistence.start()
    await persistence.migrate()
    yield clock, metrics, persistence, InstanceCounts(metrics, persistence, clock)
    await persistence.close()


@pytest_twisted.ensureDeferred
async def test_the_counts_are_read_again_only_once_they_are_stale(counted):
    clock, metrics, persistence, counts = counted
    await persistence.create_instance("i-1", "t")

    await counts.refresh()
    await persistence.create_instance("i-2", "t")
    clock.advance(STATUS_REFRESH_SECONDS - 0.1)
    await counts.refresh()

    assert reads(metrics) == 1
    assert gauge(metrics, "pending") == 1

    clock.advance(0.1)
    await counts.refresh()

    assert reads(metrics) == 2
    assert gauge(metrics, "pending") == 2
    assert gauge(metrics, "failed") == 0


@pytest_twisted.ensureDeferred
async def test_scrapes_arriving_together_share_one_read(counted):
    _, metrics, _, counts = counted

    first, second = counts.refresh(), counts.refresh()
    await first
    await second

    assert reads(metrics) == 1
