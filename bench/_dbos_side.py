"""The DBOS side of ``bench.peer_dbos``: the same work through DBOS Transact.

``measure(...)`` runs in a process of its own, spawned by ``peer_dbos`` for
each DBOS run: DBOS is one instance per process, and every run gets a fresh
system database. Only that child imports this module, so ``dbos`` (the
optional ``bench`` extra) is needed only when the peer comparison runs.

The work is what ``bench.sdk_steps`` gives runtara: a ``@DBOS.workflow()``
that calls a ``@DBOS.step()`` S times in a row, each returning the same
B-byte ``bytes`` value; N workflows, K in flight. K in flight means K
threads of this process, each calling the workflow function directly (it
runs in the calling thread, as DBOS documents) and starting the next one
as soon as its previous one returned. The window opens when all K threads
pass a barrier, after ``DBOS.launch()``.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from importlib import metadata
from typing import Any

from dbos import DBOS, SetWorkflowID

from bench._common import latency_summary, machine_cpu

APP_NAME = "runtara-bench-peer"
THREAD_TIMEOUT_S = 600.0

_result = b""
_step_seconds: list[float] = []


@DBOS.step()
def produce() -> bytes:
    return _result


@DBOS.workflow()
def steps_in_a_row(steps: int) -> int:
    for k in range(steps):
        begin = time.perf_counter()
        value = produce()
        _step_seconds.append(time.perf_counter() - begin)
        if value != _result:
            raise RuntimeError(f"step {k} returned another value")
    return steps


def measure(
    database_url: str, workflows: int, in_flight: int, steps: int, step_bytes: int
) -> dict[str, Any]:
    """One DBOS run on ``database_url`` (a fresh system database); the measured values."""
    global _result
    _result = os.urandom(step_bytes)
    _step_seconds.clear()
    DBOS(config={"name": APP_NAME, "system_database_url": database_url, "log_level": "WARNING"})
    DBOS.launch()
    try:
        values = _run(workflows, in_flight, steps)
        values.update(_check(workflows, steps))
    finally:
        DBOS.destroy()
    values.update(_settings(database_url))
    return values


def _run(workflows: int, in_flight: int, steps: int) -> dict[str, Any]:
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for w in range(workflows):
        pending.put(f"dbos-{os.getpid()}-w{w}")
    barrier = threading.Barrier(in_flight + 1)
    workflow_seconds: list[float] = []
    errors: list[BaseException] = []

    def slot() -> None:
        try:
            barrier.wait(THREAD_TIMEOUT_S)
            while True:
                try:
                    workflow_id = pending.get_nowait()
                except queue.Empty:
                    return
                begin = time.perf_counter()
                with SetWorkflowID(workflow_id):
                    done = steps_in_a_row(steps)
                workflow_seconds.append(time.perf_counter() - begin)
                if done != steps:
                    raise RuntimeError(f"{workflow_id} returned {done!r}")
        except BaseException as error:  # reported by the caller
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    barrier.wait(THREAD_TIMEOUT_S)
    started, cpu_started, machine_started = time.monotonic(), time.process_time(), machine_cpu()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    window = max(time.monotonic() - started, 1e-9)
    cpu = time.process_time() - cpu_started
    machine_busy = _busy_fraction(machine_started, machine_cpu())
    if errors:
        raise errors[0]
    process_pct = 100 * cpu / window
    machine_pct = 100 * machine_busy * (os.cpu_count() or 1)
    completed = len(workflow_seconds)
    return {
        "in_flight": in_flight,
        "workflows_asked": workflows,
        "workflows_done": completed,
        "steps_done": len(_step_seconds),
        "window_s": window,
        "steps_per_s": completed * steps / window,
        "workflows_per_s": completed / window,
        **latency_summary(_step_seconds, "step"),
        **latency_summary(workflow_seconds, "workflow"),
        "client_cpu_s": cpu,
        "client_cpu_pct": process_pct,
        "machine_busy_pct": 100 * machine_busy,
        "other_cpu_pct": max(0.0, machine_pct - process_pct),
    }


def _busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return min(1.0, busy / max(total, 1e-9))


def _check(workflows: int, steps: int) -> dict[str, Any]:
    """What DBOS itself recorded: every workflow SUCCESS, with S steps each (first one checked)."""
    succeeded = DBOS.list_workflows(status="SUCCESS", load_input=False, load_output=False)
    if len(succeeded) != workflows:
        raise RuntimeError(f"DBOS recorded {len(succeeded)} successful workflows, not {workflows}")
    recorded_steps = DBOS.list_workflow_steps(succeeded[0].workflow_id)
    if len(recorded_steps) != steps:
        raise RuntimeError(f"DBOS recorded {len(recorded_steps)} steps, not {steps}")
    return {"dbos_workflows_recorded": len(succeeded)}


def _settings(database_url: str) -> dict[str, Any]:
    """DBOS's version, and on SQLite the durability settings its file ended up with."""
    values: dict[str, Any] = {"dbos_version": metadata.version("dbos")}
    prefix = "sqlite:///"
    if database_url.startswith(prefix):
        connection = sqlite3.connect(database_url[len(prefix) :])
        try:
            values["dbos_sqlite_journal_mode"] = connection.execute(
                "PRAGMA journal_mode"
            ).fetchone()[0]
            values["dbos_sqlite_synchronous"] = connection.execute("PRAGMA synchronous").fetchone()[
                0
            ]
        finally:
            connection.close()
    return values
