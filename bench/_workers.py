"""Client load processes: each runs its own reactor with its share of instances.

``run_workers(target, specs, server_pid)`` starts one process per
``WorkerSpec`` (``multiprocessing``, spawn), each running the coroutine
function named by ``target`` (``"module:function"``) as
``await function(ctx)`` with a ``WorkerContext``. The function prepares
(connects, registers) and then calls ``await ctx.start()``: a barrier shared
by every worker and the parent, so the measurement windows of all processes
open together. The parent samples the server's and the machine's CPU when
the barrier opens and again when the last worker has reported; each worker
reports its own window and CPU time (``ctx.finish()``).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench._common import CpuSample, cpu_between

BARRIER_TIMEOUT_S = 180.0
RESULT_TIMEOUT_S = 600.0


@dataclass
class WorkerSpec:
    """What one load process gets: where the server is, its instances, the parameters."""

    index: int
    host: str
    port: int
    cafile: str
    instance_ids: list[str]
    params: dict[str, Any] = field(default_factory=dict)


class WorkerContext:
    """Handed to a worker's coroutine function."""

    def __init__(self, reactor: Any, spec: WorkerSpec, barrier: Any) -> None:
        self.reactor = reactor
        self.spec = spec
        self.params = spec.params
        self._barrier = barrier
        self._clients: list[Any] = []
        self.window_start = 0.0
        self.window_end = 0.0
        self._cpu_start = 0.0

    async def connect(self) -> Any:
        """A new ``RuntaraClient`` to the server (closed when the worker ends)."""
        from runtara.client import RuntaraClient

        client = await RuntaraClient.connect(
            self.reactor,
            self.spec.host,
            self.spec.port,
            cafile=self.spec.cafile,
            connect_timeout=30.0,
        )
        self._clients.append(client)
        return client

    async def connect_many(self, count: int) -> list[Any]:
        return list(await gather(self.connect() for _ in range(count)))

    async def start(self) -> None:
        """Wait until every worker (and the parent) is ready, then open the window."""
        from twisted.internet.threads import deferToThreadPool

        pool = self.reactor.getThreadPool()
        await deferToThreadPool(self.reactor, pool, self._barrier.wait, BARRIER_TIMEOUT_S)
        self.window_start = time.monotonic()
        self._cpu_start = time.process_time()

    def finish(self, **values: Any) -> dict[str, Any]:
        """Close the window; the worker's report: its window, its CPU and ``values``."""
        self.window_end = time.monotonic()
        return {
            "window_start": self.window_start,
            "window_end": self.window_end,
            "client_cpu_s": time.process_time() - self._cpu_start,
            **values,
        }

    async def close(self) -> None:
        from twisted.internet.defer import DeferredList

        closing = [client.close() for client in self._clients]
        self._clients.clear()
        await DeferredList(closing, consumeErrors=True)


async def gather(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run coroutines concurrently on the reactor; their results in order (first error wins)."""
    from twisted.internet.defer import Deferred, FirstError, gatherResults

    deferreds = [
        a if isinstance(a, Deferred) else Deferred.fromCoroutine(a)  # type: ignore[arg-type]
        for a in awaitables
    ]
    try:
        return await gatherResults(deferreds, consumeErrors=True)
    except FirstError as error:
        error.subFailure.raiseException()
        raise


def _worker_main(target: str, spec: WorkerSpec, barrier: Any, results: Any) -> None:
    """Entry point of a load process (spawned: imports nothing from the parent)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    module_name, function_name = target.split(":")
    function: Callable[[WorkerContext], Awaitable[dict[str, Any]]] = getattr(
        importlib.import_module(module_name), function_name
    )
    reactor.suggestThreadPoolSize(4)
    context = WorkerContext(reactor, spec, barrier)

    async def main() -> None:
        try:
            report = await function(context)
        except BaseException:
            barrier.abort()
            results.put({"index": spec.index, "error": traceback.format_exc()})
        else:
            results.put({"index": spec.index, "report": report})
        finally:
            await context.close()

    def stop(_: object) -> None:
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addBoth(stop))
    reactor.run(installSignalHandlers=False)


class WorkerError(RuntimeError):
    """A load process failed; the message holds its traceback."""


@dataclass
class WorkersOutcome:
    reports: list[dict[str, Any]]
    """Each worker's report, in spec order."""
    cpu: dict[str, float]
    """Server and machine CPU over the parent's window (barrier to last report)."""
    window_s: float
    """From the earliest worker window start to the latest window end."""
    client_cpu_s: float
    """Sum of the workers' CPU time in their windows."""

    def merged(self, key: str) -> list[Any]:
        """The concatenation of a list-valued report entry over all workers."""
        merged: list[Any] = []
        for report in self.reports:
            merged.extend(report.get(key, ()))
        return merged

    def total(self, key: str) -> float:
        return sum(report.get(key, 0) for report in self.reports)

    def client_fields(self) -> dict[str, float]:
        window = max(self.window_s, 1e-9)
        client_pct = 100 * self.client_cpu_s / window
        machine_pct = self.cpu["machine_busy_pct"] * (os.cpu_count() or 1)
        return {
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_pct": client_pct,
            # Everything else that ran meanwhile, in % of one core: PostgreSQL's
            # backends, the kernel's work for other processes, other users.
            "other_cpu_pct": max(0.0, machine_pct - self.cpu["server_cpu_pct"] - client_pct),
        }


def run_workers(
    target: str,
    specs: list[WorkerSpec],
    server_pid: int | None,
    *,
    during: Callable[[], None] | None = None,
) -> WorkersOutcome:
    """Start the load processes, open their window together, collect their reports.

    ``during`` (optional) runs in a thread of the parent right after the
    barrier opened (a profiler, say) and is joined before returning.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(specs) + 1)
    results = context.Queue()
    processes = [
        context.Process(target=_worker_main, args=(target, spec, barrier, results), daemon=True)
        for spec in specs
    ]
    for process in processes:
        process.start()
    helper: threading.Thread | None = None
    try:
        try:
            barrier.wait(BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            message = _first_error(results) or "the load processes never got ready"
            raise WorkerError(message) from None
        before = CpuSample.take(server_pid)
        if during is not None:
            helper = threading.Thread(target=during, daemon=True)
            helper.start()
        reports: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while len(reports) < len(specs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError("the load processes did not report in time")
            message = results.get(timeout=remaining)
            if "error" in message:
                raise WorkerError(f"load process {message['index']} failed:\n{message['error']}")
            reports[message["index"]] = message["report"]
        after = CpuSample.take(server_pid)
    finally:
        if helper is not None:
            helper.join()
        for process in processes:
            process.join(timeout=15)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
    ordered = [reports[spec.index] for spec in specs]
    window = max(r["window_end"] for r in ordered) - min(r["window_start"] for r in ordered)
    return WorkersOutcome(
        reports=ordered,
        cpu=cpu_between(before, after),
        window_s=window,
        client_cpu_s=sum(r["client_cpu_s"] for r in ordered),
    )


def _first_error(results: Any) -> str | None:
    try:
        message = results.get(timeout=10)
    except queue_module.Empty:
        return None
    return message.get("error")


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``parts`` lists (none empty if avoidable)."""
    parts = max(1, min(parts, len(items)))
    return [items[index::parts] for index in range(parts)]


def specs_for(
    server: Any, instance_ids: list[str], processes: int, params: dict[str, Any]
) -> list[WorkerSpec]:
    return [
        WorkerSpec(index, server.host, server.port, server.cafile, share, dict(params))
        for index, share in enumerate(split(instance_ids, processes))
    ]
