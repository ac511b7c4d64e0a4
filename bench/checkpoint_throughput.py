"""Checkpoint throughput: N concurrent instances, each saving K new checkpoints of B bytes.

The server runs in its own process (``twistd -n runtara-core``). The
instances are spread over client load processes; each instance has its own
QUIC connection (``--instances-per-connection`` to share), registers before
the measurement window opens, then saves ``cp-0`` .. ``cp-{K-1}`` one after
another (every answer must be ``found: false``). Reported: checkpoints/s
over the common window, per-call latency p50/p99/p99.9 as the client sees
it, the server's CPU (from /proc/<pid>/stat) and the clients' CPU.

In the same run, after the server has stopped, the database's own limit is
measured on the same database server with the same rows (``bench._limit``);
the ratio engine/limit is printed beside the figure.

    python -m bench.checkpoint_throughput --engine sqlite --instances 64 \\
        --checkpoints 200 --state-bytes 100 --runs 3
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    RESULTS_DIR,
    TENANT,
    ServerProcess,
    base_parser,
    default_client_procs,
    latency_summary,
    main_for,
    scratch_database,
    workdir,
)
from bench._limit import measure_limit, rows_for
from bench._workers import WorkerContext, gather, run_workers, specs_for

SCENARIO = "checkpoint_throughput"

COLUMNS = [
    ("checkpoints_per_s", "ckpt/s", ",.0f"),
    ("limit_rows_per_s", "db limit/s", ",.0f"),
    ("ratio", "engine/limit", ".2f"),
    ("latency_p50_ms", "p50 ms", ".2f"),
    ("latency_p99_ms", "p99 ms", ".2f"),
    ("latency_p999_ms", "p99.9 ms", ".2f"),
    ("server_cpu_pct", "server cpu%", ".0f"),
    ("client_cpu_pct", "client cpu%", ".0f"),
    ("other_cpu_pct", "other cpu%", ".0f"),
    ("server_cpu_ms_per_checkpoint", "srv cpu ms/ckpt", ".2f"),
    ("udp_rcvbuf_drops", "udp drops", "d"),
]


# -- the load process -----------------------------------------------------------------------


async def load(ctx: WorkerContext) -> dict[str, Any]:
    ids = ctx.spec.instance_ids
    checkpoints = ctx.params["checkpoints"]
    per_connection = ctx.params["instances_per_connection"]
    clients = await ctx.connect_many(math.ceil(len(ids) / per_connection))
    owners = [clients[index // per_connection] for index in range(len(ids))]
    await gather(register(client, iid) for client, iid in zip(owners, ids, strict=True))
    state = os.urandom(ctx.params["state_bytes"])
    latencies: list[float] = []
    found = 0

    async def instance(client: Any, instance_id: str) -> None:
        nonlocal found
        for k in range(checkpoints):
            begin = time.perf_counter()
            answer = await client.call(
                "checkpoint",
                {"instance_id": instance_id, "checkpoint_id": f"cp-{k}", "state": state},
            )
            latencies.append(time.perf_counter() - begin)
            found += bool(answer["found"])

    await ctx.start()
    await gather(instance(client, iid) for client, iid in zip(owners, ids, strict=True))
    return ctx.finish(latencies=latencies, checkpoints=len(latencies), found=found)


async def register(client: Any, instance_id: str, **fields: Any) -> dict[str, Any]:
    answer = await client.call(
        "register_instance", {"instance_id": instance_id, "tenant_id": TENANT, **fields}
    )
    if not answer["success"]:
        raise RuntimeError(f"register_instance {instance_id} refused: {answer['error']}")
    return answer


# -- profiling ----------------------------------------------------------------------------------


class Profiler:
    """py-spy attached to the server for the measurement window (``--profile py-spy``)."""

    def __init__(self, output: Path, rate: int = 250, extra: list[str] | None = None) -> None:
        self.output = output
        self.extra = list(extra or [])
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, pid: int) -> None:
        py_spy = Path(sys.executable).with_name("py-spy")
        command = [
            str(py_spy if py_spy.exists() else "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--threads",
            *self.extra,
            "--output",
            str(self.output),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- one run ------------------------------------------------------------------------------------


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    instances, checkpoints = args.instances, args.checkpoints
    ids = [f"tp-{os.getpid()}-{index}-{i}" for i in range(instances)]
    params = {
        "checkpoints": checkpoints,
        "state_bytes": args.state_bytes,
        "instances_per_connection": args.instances_per_connection,
    }
    procs = default_client_procs(instances, args.client_procs)
    profiler = None
    if args.profile:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"profile-{args.engine}-n{instances}-b{args.state_bytes}-{stamp}-run{index + 1}.txt"
        extra = ["--native"] if args.profile_native else []
        profiler = Profiler(RESULTS_DIR / name, extra=extra)
        profiler.output.parent.mkdir(parents=True, exist_ok=True)
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        server = ServerProcess(
            db.url,
            directory / "state",
            max_instances=instances + 16,
            pool_size=args.pool_size,
            switch_interval=args.server_switch_interval,
            udp_rcvbuf=args.server_udp_rcvbuf,
            workers=args.workers,
        )
        with server:
            during = None
            if profiler is not None:
                pid = server.pid

                def during() -> None:
                    profiler.start(pid)

            try:
                specs = specs_for(server, ids, procs, params)
                outcome = run_workers(
                    "bench.checkpoint_throughput:load", specs, server.pid, during=during
                )
            finally:
                if profiler is not None:
                    profiler.stop()
        done = int(outcome.total("checkpoints"))
        result: dict[str, Any] = {
            "instances": instances,
            "checkpoints_asked": instances * checkpoints,
            "checkpoints_done": done,
            "found_true": int(outcome.total("found")),
            "client_procs": procs,
            "window_s": outcome.window_s,
            "checkpoints_per_s": done / max(outcome.window_s, 1e-9),
            **latency_summary(outcome.merged("latencies")),
            **outcome.cpu,
            **outcome.client_fields(),
        }
        # CPU cost per checkpoint, and the rate the machine's cores could carry
        # at that cost if the database took no time at all.
        server_ms = 1000 * result["server_cpu_s"] / max(done, 1)
        client_ms = 1000 * result["client_cpu_s"] / max(done, 1)
        result["server_cpu_ms_per_checkpoint"] = server_ms
        result["client_cpu_ms_per_checkpoint"] = client_ms
        result["cpu_bound_ceiling_per_s"] = (os.cpu_count() or 1) * 1000 / (server_ms + client_ms)
        if not args.no_limit:
            state = os.urandom(args.state_bytes)
            pool = min(args.pool_size, instances)
            result.update(measure_limit(db, rows_for(ids, checkpoints), state, pool))
            result["ratio"] = result["checkpoints_per_s"] / result["limit_rows_per_s"]
    if profiler is not None:
        result["profile"] = str(profiler.output)
    return result


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--instances", type=int, default=64, help="N concurrent instances")
    p.add_argument("--checkpoints", type=int, default=200, help="K checkpoints per instance")
    p.add_argument("--state-bytes", type=int, default=100, help="B bytes per checkpoint state")
    p.add_argument("--instances-per-connection", type=int, default=1)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runtara-core --workers N: N server processes behind one port (CPU sums them)",
    )
    p.add_argument("--no-limit", action="store_true", help="skip the database-limit loop")
    p.add_argument(
        "--profile", action="store_true", help="record the server with py-spy (raw stacks)"
    )
    p.add_argument(
        "--profile-native", action="store_true", help="with --profile: native frames too"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    params = {
        "instances": args.instances,
        "checkpoints": args.checkpoints,
        "state_bytes": args.state_bytes,
        "instances_per_connection": args.instances_per_connection,
        "client_procs": default_client_procs(args.instances, args.client_procs),
        "pool_size": args.pool_size,
        "workers": args.workers,
    }
    tag = f"n{args.instances}-b{args.state_bytes}"
    if args.workers > 1:
        tag += f"-w{args.workers}"
    return main_for(SCENARIO, tag, args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
