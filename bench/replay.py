"""Replay: N instances read back K existing checkpoints, as a restarted workflow does.

Setup (not measured): each instance registers on a connection, saves
``cp-0`` .. ``cp-{K-1}`` and the connection closes (the workflow process
died). Measured: on a new connection each instance re-registers with
``checkpoint_id = cp-{K-1}`` (resume; the answer must say ``resumed``) and
replays its K steps: ``checkpoint`` calls with the same ids, each of which
must answer ``found: true`` with the stored state (``--read-op
get_checkpoint`` reads with the read-only operation instead).

    python -m bench.replay --engine sqlite --instances 64 --checkpoints 100 --runs 3
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

SCENARIO = "replay"

COLUMNS = [
    ("reads_per_s", "replayed/s", ",.0f"),
    ("replayed", "replayed", "d"),
    ("found_true", "found", "d"),
    ("latency_p50_ms", "p50 ms", ".2f"),
    ("latency_p99_ms", "p99 ms", ".2f"),
    ("latency_p999_ms", "p99.9 ms", ".2f"),
    ("register_p50_ms", "resume reg p50 ms", ".2f"),
    ("server_cpu_pct", "server cpu%", ".0f"),
    ("client_cpu_pct", "client cpu%", ".0f"),
]


def _state(instance_id: str, k: int, size: int) -> bytes:
    seed = f"{instance_id}/{k}/".encode()
    return (seed * (size // len(seed) + 1))[:size]


async def load(ctx: WorkerContext) -> dict[str, Any]:
    ids = ctx.spec.instance_ids
    checkpoints, size = ctx.params["checkpoints"], ctx.params["state_bytes"]
    per_connection = ctx.params["instances_per_connection"]
    connections = math.ceil(len(ids) / per_connection)

    async def write(client: Any, instance_id: str) -> None:
        await register(client, instance_id)
        for k in range(checkpoints):
            await client.call(
                "checkpoint",
                {
                    "instance_id": instance_id,
                    "checkpoint_id": f"cp-{k}",
                    "state": _state(instance_id, k, size),
                },
            )

    setup = await ctx.connect_many(connections)
    await gather(write(setup[i // per_connection], iid) for i, iid in enumerate(ids))
    await ctx.close()  # the workflow processes "crash"
    clients = await ctx.connect_many(connections)
    read_op = ctx.params["read_op"]
    latencies: list[float] = []
    registers: list[float] = []
    found = 0
    mismatched = 0

    async def replay(client: Any, instance_id: str) -> None:
        nonlocal found, mismatched
        begin = time.perf_counter()
        answer = await register(client, instance_id, checkpoint_id=f"cp-{checkpoints - 1}")
        registers.append(time.perf_counter() - begin)
        if not answer["resumed"]:
            raise RuntimeError(f"{instance_id} was not resumed: {answer}")
        for k in range(checkpoints):
            fields: dict[str, Any] = {"instance_id": instance_id, "checkpoint_id": f"cp-{k}"}
            if read_op == "checkpoint":
                fields["state"] = b"ignored on replay"
            begin = time.perf_counter()
            answer = await client.call(read_op, fields)
            latencies.append(time.perf_counter() - begin)
            found += bool(answer["found"])
            mismatched += answer["state"] != _state(instance_id, k, size)

    await ctx.start()
    await gather(replay(clients[i // per_connection], iid) for i, iid in enumerate(ids))
    return ctx.finish(latencies=latencies, registers=registers, found=found, mismatched=mismatched)


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    instances = args.instances
    ids = [f"rp-{os.getpid()}-{index}-{i}" for i in range(instances)]
    params = {
        "checkpoints": args.checkpoints,
        "state_bytes": args.state_bytes,
        "instances_per_connection": args.instances_per_connection,
        "read_op": args.read_op,
    }
    procs = default_client_procs(instances, args.client_procs)
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        with ServerProcess(
            db.url, directory / "state", max_instances=instances + 16, pool_size=args.pool_size
        ) as server:
            outcome = run_workers(
                "bench.replay:load", specs_for(server, ids, procs, params), server.pid
            )
    latencies = outcome.merged("latencies")
    return {
        "instances": instances,
        "replayed_asked": instances * args.checkpoints,
        "replayed": len(latencies),
        "found_true": int(outcome.total("found")),
        "state_mismatches": int(outcome.total("mismatched")),
        "client_procs": procs,
        "window_s": outcome.window_s,
        "reads_per_s": len(latencies) / max(outcome.window_s, 1e-9),
        **latency_summary(latencies),
        **latency_summary(outcome.merged("registers"), "register"),
        **outcome.cpu,
        **outcome.client_fields(),
    }


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--instances", type=int, default=64)
    p.add_argument("--checkpoints", type=int, default=100)
    p.add_argument("--state-bytes", type=int, default=100)
    p.add_argument("--instances-per-connection", type=int, default=1)
    p.add_argument("--read-op", choices=("checkpoint", "get_checkpoint"), default="checkpoint")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    params = {
        "instances": args.instances,
        "checkpoints": args.checkpoints,
        "state_bytes": args.state_bytes,
        "read_op": args.read_op,
        "client_procs": default_client_procs(args.instances, args.client_procs),
    }
    tag = f"n{args.instances}-{args.read_op}"
    return main_for(SCENARIO, tag, args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
