"""Signal latency: an operator's cancel, until the instance sees it on its next checkpoint.

N instances checkpoint in a tight loop (new checkpoint ids: real writes).
A separate admin process opens the same database through the admin API
(``runtara.admin.open_admin``; ``IPersistence.send_signal`` directly when
the admin API is not available) and sends one ``cancel`` to each instance,
one every ``--interval-ms``, in shuffled order. An instance that finds
``pending_signal`` of type cancel in a checkpoint answer notes the time,
acknowledges it (``signal_ack``) and stops. Latency = the answer's
arrival - the moment ``send_signal`` was called (both ``time.monotonic``
on one machine); the commit time of ``send_signal`` is reported too.

    python -m bench.signal_latency --engine sqlite --instances 16 --runs 3
"""

from __future__ import annotations

import argparse
import os
import random
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
from bench._workers import WorkerContext, WorkerSpec, gather, run_workers, specs_for
from bench.checkpoint_throughput import register

SCENARIO = "signal_latency"
GIVE_UP_S = 60.0

COLUMNS = [
    ("signals_seen", "seen", "d"),
    ("signal_p50_ms", "p50 ms", ".2f"),
    ("signal_p99_ms", "p99 ms", ".2f"),
    ("signal_max_ms", "max ms", ".2f"),
    ("send_commit_p50_ms", "send commit p50 ms", ".2f"),
    ("checkpoint_p50_ms", "loop ckpt p50 ms", ".2f"),
    ("server_cpu_pct", "server cpu%", ".0f"),
]


async def instances(ctx: WorkerContext) -> dict[str, Any]:
    """Load process: instances that checkpoint until they see their cancel."""
    ids = ctx.spec.instance_ids
    clients = await ctx.connect_many(len(ids))
    await gather(register(client, iid) for client, iid in zip(clients, ids, strict=True))
    state = os.urandom(ctx.params["state_bytes"])
    seen: dict[str, float] = {}
    loop_latencies: list[float] = []

    async def run(client: Any, instance_id: str) -> None:
        deadline = time.monotonic() + GIVE_UP_S
        k = 0
        while time.monotonic() < deadline:
            begin = time.perf_counter()
            answer = await client.call(
                "checkpoint",
                {"instance_id": instance_id, "checkpoint_id": f"cp-{k}", "state": state},
            )
            arrived = time.monotonic()
            loop_latencies.append(time.perf_counter() - begin)
            k += 1
            signal = answer.get("pending_signal")
            if signal and signal["signal_type"] == "cancel":
                seen[instance_id] = arrived
                ack = await client.call(
                    "signal_ack",
                    {"instance_id": instance_id, "signal_type": "cancel", "acknowledged": True},
                )
                if not ack["success"] or ack["status"] != "cancelled":
                    raise RuntimeError(f"ack of {instance_id}'s cancel: {ack}")
                return

    await ctx.start()
    await gather(run(client, iid) for client, iid in zip(clients, ids, strict=True))
    return ctx.finish(seen=seen, loop_latencies=loop_latencies)


async def admin(ctx: WorkerContext) -> dict[str, Any]:
    """The operator: sends the cancels through the admin API."""
    from twisted.internet import task

    from runtara.database_url import parse_database_url
    from runtara.model import SignalType

    url = parse_database_url(ctx.params["database_url"])
    try:
        from runtara.admin import open_admin
    except ImportError:  # the admin API is not there: the shared persistence itself
        from runtara.persistence import open_persistence

        sender: Any = open_persistence(url, ctx.reactor, ctx.reactor, pool_size=1)
        await sender.start()
        via = "IPersistence.send_signal"
    else:
        sender = await open_admin(url, ctx.reactor)
        via = "runtara.admin.Admin.send_signal"
    ids = list(ctx.spec.instance_ids)
    random.Random(ctx.params["seed"]).shuffle(ids)
    sent: dict[str, float] = {}
    committed: dict[str, float] = {}
    try:
        await ctx.start()
        await task.deferLater(ctx.reactor, ctx.params["warmup_s"], lambda: None)
        for instance_id in ids:
            sent[instance_id] = time.monotonic()
            await sender.send_signal(instance_id, SignalType.CANCEL, b"bench")
            committed[instance_id] = time.monotonic()
            await task.deferLater(ctx.reactor, ctx.params["interval_s"], lambda: None)
    finally:
        await sender.close()
    return ctx.finish(sent=sent, committed=committed, via=via)


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    ids = [f"sg-{os.getpid()}-{index}-{i}" for i in range(args.instances)]
    procs = default_client_procs(args.instances, args.client_procs)
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        with ServerProcess(
            db.url,
            directory / "state",
            max_instances=args.instances + 16,
            pool_size=args.pool_size,
        ) as server:
            specs = specs_for(server, ids, procs, {"state_bytes": args.state_bytes})
            admin_params = {
                "database_url": db.url,
                "interval_s": args.interval_ms / 1000,
                "warmup_s": args.warmup_ms / 1000,
                "seed": index,
            }
            specs.append(
                WorkerSpec(len(specs), server.host, server.port, server.cafile, ids, admin_params)
            )
            outcome = run_workers("bench.signal_latency:dispatch", specs, server.pid)
    sender = outcome.reports[-1]
    seen: dict[str, float] = {}
    for report in outcome.reports[:-1]:
        seen.update(report["seen"])
    latencies = [seen[i] - sender["sent"][i] for i in ids if i in seen and i in sender["sent"]]
    commits = [sender["committed"][i] - sender["sent"][i] for i in sender["committed"]]
    return {
        "instances": args.instances,
        "signals_sent": len(sender["sent"]),
        "signals_seen": len(latencies),
        "sent_via": sender["via"],
        "client_procs": procs,
        **latency_summary(latencies, "signal"),
        **latency_summary(commits, "send_commit"),
        **latency_summary(outcome.merged("loop_latencies"), "checkpoint"),
        **outcome.cpu,
        **outcome.client_fields(),
    }


async def dispatch(ctx: WorkerContext) -> dict[str, Any]:
    """One worker target for both roles: the admin spec carries ``database_url``."""
    if "database_url" in ctx.params:
        return await admin(ctx)
    return await instances(ctx)


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--instances", type=int, default=16, help="instances (one cancel each)")
    p.add_argument("--interval-ms", type=float, default=50.0, help="time between two cancels")
    p.add_argument("--warmup-ms", type=float, default=300.0, help="loop time before the first")
    p.add_argument("--state-bytes", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    params = {
        "instances": args.instances,
        "interval_ms": args.interval_ms,
        "state_bytes": args.state_bytes,
        "client_procs": default_client_procs(args.instances, args.client_procs),
    }
    return main_for(SCENARIO, f"n{args.instances}", args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
