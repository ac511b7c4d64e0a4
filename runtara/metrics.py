"""Prometheus metrics of one runtara process (``prometheus_client``).

``Metrics`` holds every metric in a registry of its own, made once by the
composition root (``runtara.service.build_service``) and passed to the parts
that observe: the dispatcher (operations), the store's one transaction
chokepoint (database latency), the SQLite group committer (batch sizes).
Values the server already keeps (open QUIC connections, sleeps held) are
read when scraped, through ``watch``. Instances by status come from the
database, at most every ``STATUS_REFRESH_SECONDS`` (``InstanceCounts``).

Nothing here is module-level state: two services in one process (tests)
have two registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from runtara.interfaces import IPersistence
from runtara.model import Status

_T = TypeVar("_T")

STATUS_REFRESH_SECONDS = 5.0
"""The oldest the ``runtara_instances`` gauge may be when scraped."""

STORED_STATUSES: tuple[Status, ...] = (
    Status.PENDING,
    Status.RUNNING,
    Status.SUSPENDED,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
)

OK = "ok"
"""The outcome of an operation that succeeded."""
ABANDONED = "abandoned"
"""The outcome of an operation whose connection went away before it could answer."""
INVALID_REQUEST = "invalid"
"""The operation label of requests refused before they named a known operation."""

_OPERATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Seconds; the long ones are for ``sleep`` calls, which last as long as the sleep."""
_TRANSACTION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Operations per SQLite transaction, up to the committer's largest batch (256)."""


class Metrics:
    """The metrics of one process; ``timer`` is a monotonic clock in seconds."""

    def __init__(self, timer: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self._timer = timer
        self.operations = Counter(
            "runtara_operations",
            "Protocol operations answered, by operation and outcome (ok or the error kind).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.operation_seconds = Histogram(
            "runtara_operation_duration_seconds",
            "Time from a request to its answer, by operation (sleep calls last their sleep).",
            ["operation"],
            buckets=_OPERATION_BUCKETS,
            registry=self.registry,
        )
        self.transaction_seconds = Histogram(
            "runtara_db_transaction_duration_seconds",
            "Time a database transaction takes, queueing included, by store operation.",
            ["operation"],
            buckets=_TRANSACTION_BUCKETS,
            registry=self.registry,
        )
        self.group_commit_batch = Histogram(
            "runtara_sqlite_group_commit_batch_size",
            "Operations committed together in one SQLite transaction.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.instances = Gauge(
            "runtara_instances",
            f"Instances in the database by status (read at most every "
            f"{STATUS_REFRESH_SECONDS:g} s).",
            ["status"],
            registry=self.registry,
        )
        self._watched: dict[str, Gauge] = {}

    def now(self) -> float:
        """The monotonic clock's time, to measure a duration from."""
        return self._timer()

    def observe_operation(self, operation: str, outcome: str, started: float | None) -> None:
        """Count one answered operation; record its latency when ``started`` is given."""
        self.operations.labels(operation, outcome).inc()
        if started is not None:
            self.operation_seconds.labels(operation).observe(self._timer() - started)

    def time_transaction(self, operation: str, transaction: Deferred[_T]) -> Deferred[_T]:
        """Observe how long ``transaction`` takes to end, committed or not."""
        started = self._timer()

        def observe(result: Any) -> Any:
            self.transaction_seconds.labels(operation).observe(self._timer() - started)
            return result

        return transaction.addBoth(observe)

    def observe_batch(self, size: int) -> None:
        """One SQLite group-commit transaction of ``size`` operations committed."""
        self.group_commit_batch.observe(size)

    def watch(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge ``name`` whose value is ``read()`` at every scrape."""
        gauge = Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)
        self._watched[name] = gauge

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)


class InstanceCounts:
    """Keeps the ``runtara_instances`` gauge at most ``max_age`` seconds old.

    ``refresh`` reads the counts from the database only when the last read is
    older than ``max_age``; the scrape that finds them stale waits for the
    read. A failed read leaves the previous values (and is logged).
    """

    _log = Logger()

    def __init__(
        self,
        metrics: Metrics,
        persistence: IPersistence,
        clock: IReactorTime,
        max_age: float = STATUS_REFRESH_SECONDS,
    ) -> None:
        self._metrics = metrics
        self._persistence = persistence
        self._clock = clock
        self._max_age = max_age
        self._read_at: float | None = None
        self._waiting: list[Deferred[None]] = []

    def refresh(self) -> Deferred[None]:
        """Fire once the gauge is fresh enough. Never fails."""
        now = self._clock.seconds()
        if self._read_at is not None and now - self._read_at < self._max_age:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            Deferred.fromCoroutine(self._read(now))
        return waiter

    async def _read(self, now: float) -> None:
        try:
            counts = await self._persistence.count_by_status()
        except Exception:
            self._log.failure("could not read the instance counts for /metrics")
        else:
            for status in STORED_STATUSES:
                self._metrics.instances.labels(status.value).set(counts.get(status, 0))
            self._read_at = now
        finally:
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(None)
