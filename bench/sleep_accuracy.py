"""Sleep accuracy: lateness of wake-ups with many concurrent durable sleepers.

N instances (default 1,000; the server runs with
``--max-concurrent-instances`` = N + 16) register before the window opens,
then all call ``sleep`` with ``--sleep-ms`` (default 2 s) at once. A
sleeping instance releases its slot; the server holds each call on a
reactor timer and answers after its wake transaction. Lateness = the
answer's arrival (client wall clock, ms) - ``wake_at_ms`` (server wall
clock, same machine). Instances share connections
(``--instances-per-connection``, default 10), as sleepers of one process
would.

    python -m bench.sleep_accuracy --engine sqlite --instances 1000 --sleep-ms 2000 --runs 3
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

from bench._common import (
    ServerProcess,
    base_parser,
    default_client_procs,
    latency_summary,
    main_for,
    scratch_database,
    workdir,
)
from bench._workers import WorkerContext, gather, run_workers, specs_for
from bench.checkpoint_throughput import register

SCENARIO = "sleep_accuracy"

COLUMNS = [
    ("woken", "woken", "d"),
    ("lateness_p50_ms", "late p50 ms", ".1f"),
    ("lateness_p99_ms", "late p99 ms", ".1f"),
    ("lateness_max_ms", "late max ms", ".1f"),
    ("sleep_start_spread_ms", "wake_at spread ms", ".0f"),
    ("server_cpu_pct", "server cpu%", ".0f"),
]


async def load(ctx: WorkerContext) -> dict[str, Any]:
    ids = ctx.spec.instance_ids
    per_connection = ctx.params["instances_per_connection"]
    clients = await ctx.connect_many(math.ceil(len(ids) / per_connection))
    owners = [clients[index // per_connection] for index in range(len(ids))]
    await gather(register(client, iid) for client, iid in zip(owners, ids, strict=True))
    duration_ms = ctx.params["sleep_ms"]
    lateness: list[float] = []
    wake_ats: list[int] = []

    async def sleeper(client: Any, instance_id: str) -> None:
        answer = await client.call(
            "sleep",
            {
                "instance_id": instance_id,
                "duration_ms": duration_ms,
                "checkpoint_id": "nap",
                "state": b"",
            },
        )
        arrived_ms = time.time() * 1000
        lateness.append((arrived_ms - answer["wake_at_ms"]) / 1000)
        wake_ats.append(answer["wake_at_ms"])

    await ctx.start()
    await gather(sleeper(client, iid) for client, iid in zip(owners, ids, strict=True))
    return ctx.finish(lateness=lateness, wake_ats=wake_ats)


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    ids = [f"sl-{os.getpid()}-{index}-{i}" for i in range(args.instances)]
    params = {"sleep_ms": args.sleep_ms, "instances_per_connection": args.instances_per_connection}
    procs = default_client_procs(args.instances, args.client_procs)
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        with ServerProcess(
            db.url,
            directory / "state",
            max_instances=args.instances + 16,
            pool_size=args.pool_size,
        ) as server:
            outcome = run_workers(
                "bench.sleep_accuracy:load", specs_for(server, ids, procs, params), server.pid
            )
    lateness = outcome.merged("lateness")
    wake_ats = outcome.merged("wake_ats")
    return {
        "instances": args.instances,
        "sleep_ms": args.sleep_ms,
        "woken": len(lateness),
        "client_procs": procs,
        "window_s": outcome.window_s,
        "sleep_start_spread_ms": (max(wake_ats) - min(wake_ats)) if wake_ats else 0,
        **latency_summary(lateness, "lateness"),
        "lateness_min_ms": min(lateness) * 1000 if lateness else None,
        **outcome.cpu,
        **outcome.client_fields(),
    }


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--instances", type=int, default=1000, help="concurrent sleepers")
    p.add_argument("--sleep-ms", type=int, default=2000)
    p.add_argument("--instances-per-connection", type=int, default=10)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    params = {
        "instances": args.instances,
        "sleep_ms": args.sleep_ms,
        "instances_per_connection": args.instances_per_connection,
        "client_procs": default_client_procs(args.instances, args.client_procs),
    }
    return main_for(SCENARIO, f"n{args.instances}", args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
