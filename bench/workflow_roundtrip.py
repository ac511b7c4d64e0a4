"""Workflow round trip: register -> K checkpoint steps -> ``completed`` event, workflows/s.

N concurrent slots (one QUIC connection each) run W workflows one after
another; each workflow is a new instance: ``register_instance``, K
``checkpoint`` calls with new ids, then ``instance_event`` of type
``completed``. Reported: workflows/s over the common window and the
latency of a whole workflow (p50/p99), plus the server's and clients' CPU.

    python -m bench.workflow_roundtrip --engine sqlite --instances 16 --workflows 20 --steps 10
"""

from __future__ import annotations

import argparse
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

SCENARIO = "workflow_roundtrip"

COLUMNS = [
    ("workflows_per_s", "workflows/s", ",.1f"),
    ("calls_per_s", "calls/s", ",.0f"),
    ("workflows_done", "done", "d"),
    ("workflow_p50_ms", "wf p50 ms", ".1f"),
    ("workflow_p99_ms", "wf p99 ms", ".1f"),
    ("server_cpu_pct", "server cpu%", ".0f"),
    ("client_cpu_pct", "client cpu%", ".0f"),
]


async def load(ctx: WorkerContext) -> dict[str, Any]:
    slots = ctx.spec.instance_ids  # one id prefix per slot
    workflows, steps = ctx.params["workflows"], ctx.params["steps"]
    state = os.urandom(ctx.params["state_bytes"])
    clients = await ctx.connect_many(len(slots))
    durations: list[float] = []
    completed = 0

    async def slot(client: Any, prefix: str) -> None:
        nonlocal completed
        for w in range(workflows):
            instance_id = f"{prefix}-w{w}"
            begin = time.perf_counter()
            await register(client, instance_id)
            for k in range(steps):
                answer = await client.call(
                    "checkpoint",
                    {"instance_id": instance_id, "checkpoint_id": f"step-{k}", "state": state},
                )
                if answer["found"]:
                    raise RuntimeError(f"{instance_id} step-{k} was found: not a new workflow")
            done = await client.call(
                "instance_event",
                {
                    "instance_id": instance_id,
                    "event_type": "completed",
                    "payload": b"ok",
                    "timestamp_ms": int(time.time() * 1000),
                },
            )
            durations.append(time.perf_counter() - begin)
            completed += bool(done["success"])

    await ctx.start()
    await gather(slot(client, prefix) for client, prefix in zip(clients, slots, strict=True))
    return ctx.finish(durations=durations, completed=completed)


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    slots = [f"wf-{os.getpid()}-{index}-s{i}" for i in range(args.instances)]
    params = {"workflows": args.workflows, "steps": args.steps, "state_bytes": args.state_bytes}
    procs = default_client_procs(args.instances, args.client_procs)
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        with ServerProcess(
            db.url,
            directory / "state",
            max_instances=args.instances + 16,
            pool_size=args.pool_size,
        ) as server:
            outcome = run_workers(
                "bench.workflow_roundtrip:load", specs_for(server, slots, procs, params), server.pid
            )
    durations = outcome.merged("durations")
    completed = int(outcome.total("completed"))
    window = max(outcome.window_s, 1e-9)
    calls = completed * (args.steps + 2)
    return {
        "instances": args.instances,
        "workflows_asked": args.instances * args.workflows,
        "workflows_done": completed,
        "client_procs": procs,
        "window_s": outcome.window_s,
        "workflows_per_s": completed / window,
        "calls_per_s": calls / window,
        **latency_summary(durations, "workflow"),
        **outcome.cpu,
        **outcome.client_fields(),
    }


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--instances", type=int, default=16, help="concurrent workflow slots")
    p.add_argument("--workflows", type=int, default=20, help="workflows per slot")
    p.add_argument("--steps", type=int, default=10, help="K checkpoint steps per workflow")
    p.add_argument("--state-bytes", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    params = {
        "instances": args.instances,
        "workflows": args.workflows,
        "steps": args.steps,
        "state_bytes": args.state_bytes,
        "client_procs": default_client_procs(args.instances, args.client_procs),
    }
    tag = f"n{args.instances}-k{args.steps}"
    return main_for(SCENARIO, tag, args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
