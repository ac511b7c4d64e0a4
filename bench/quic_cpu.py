"""CPU per call: server and client CPU time for K sequential calls on one connection.

Wall-clock throughput on a shared machine says more about the neighbours
than about the code; CPU time does not (much). This scenario runs K calls of
one operation one after another on one QUIC connection (``--instances`` N
runs N such connections side by side, one instance each) and reports the
CPU each side spent per call, from ``/proc/<pid>/stat`` (utime + stime):
the whole server process, the server's reactor thread alone (QUIC, RPC,
dispatch: ``/proc/<pid>/task/<pid>/stat``, without the database thread),
and the client process. A warm-up of ``--warmup`` calls runs before the
window opens.

    python -m bench.quic_cpu --calls 10000 --runs 5
    python -m bench.quic_cpu --operation get_checkpoint --calls 10000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import (
    ServerProcess,
    base_parser,
    latency_summary,
    main_for,
    scratch_database,
    workdir,
)
from bench._workers import WorkerContext, gather, run_workers, specs_for
from bench.checkpoint_throughput import register

SCENARIO = "quic_cpu"

COLUMNS = [
    ("calls_done", "calls", "d"),
    ("server_kinstr_per_call", "server kinstr/call", ",.0f"),
    ("server_us_per_call", "server us/call", ".0f"),
    ("server_reactor_us_per_call", "reactor us/call", ".0f"),
    ("client_us_per_call", "client us/call", ".0f"),
    ("calls_per_s", "calls/s", ",.0f"),
    ("latency_p50_ms", "p50 ms", ".3f"),
    ("machine_busy_pct", "machine busy%", ".0f"),
]

OPERATIONS = ("checkpoint", "get_checkpoint", "health")


def _fields(operation: str, instance_id: str, index: int, state: bytes) -> dict[str, Any]:
    if operation == "checkpoint":
        return {"instance_id": instance_id, "checkpoint_id": f"cp-{index}", "state": state}
    if operation == "get_checkpoint":
        return {"instance_id": instance_id, "checkpoint_id": "cp-warm-0"}
    return {}


async def load(ctx: WorkerContext) -> dict[str, Any]:
    operation = ctx.params["operation"]
    calls, warmup = ctx.params["calls"], ctx.params["warmup"]
    state = os.urandom(ctx.params["state_bytes"])
    ids = ctx.spec.instance_ids
    clients = await ctx.connect_many(len(ids))
    await gather(register(client, iid) for client, iid in zip(clients, ids, strict=True))
    latencies: list[float] = []

    async def warm(client: Any, instance_id: str) -> None:
        for index in range(max(warmup, 1)):
            fields = {"instance_id": instance_id, "checkpoint_id": f"cp-warm-{index}"}
            await client.call("checkpoint", {**fields, "state": state})

    async def run(client: Any, instance_id: str) -> None:
        for index in range(calls):
            fields = _fields(operation, instance_id, index, state)
            begin = time.perf_counter()
            await client.call(operation, fields)
            latencies.append(time.perf_counter() - begin)

    await gather(warm(client, iid) for client, iid in zip(clients, ids, strict=True))
    callgrind_pid = ctx.params.get("callgrind_pid")
    if callgrind_pid:
        _callgrind_dump(callgrind_pid)
    await ctx.start()
    await gather(run(client, iid) for client, iid in zip(clients, ids, strict=True))
    report = ctx.finish(latencies=latencies, calls=len(latencies))
    if callgrind_pid:
        _callgrind_dump(callgrind_pid)
    return report


# -- instruction counts (--callgrind) ----------------------------------------------------


def _callgrind_dump(pid: int) -> None:
    """Have callgrind write the costs collected since its last dump (and zero them).

    The calls are not running meanwhile, so the dump after the window holds
    exactly the window's instructions (plus the idle reactor's few wake-ups).
    """
    subprocess.run(
        ["callgrind_control", "--dump", str(pid)],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _window_instructions(directory: Path) -> int:
    """Total instructions of the window's dump: the second dump callgrind wrote."""
    dumps = sorted(directory.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    if len(dumps) < 2:
        raise RuntimeError(f"expected two callgrind dumps in {directory}, found {dumps}")
    text = dumps[1].read_text("utf-8", errors="replace")
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {dumps[1]}")
    return int(match.group(1))


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    ids = [f"cpu-{os.getpid()}-{index}-{i}" for i in range(args.instances)]
    params = {
        "operation": args.operation,
        "calls": args.calls,
        "warmup": args.warmup,
        "state_bytes": args.state_bytes,
    }
    wrapper: list[str] = []
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        dumps = directory / "callgrind"
        if args.callgrind:
            dumps.mkdir()
            wrapper = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={dumps / 'callgrind.out'}",
            ]
        server = ServerProcess(
            db.url,
            directory / "state",
            max_instances=args.instances + 16,
            pool_size=args.pool_size,
            switch_interval=args.server_switch_interval,
            udp_rcvbuf=args.server_udp_rcvbuf,
            wrapper=wrapper,
            start_timeout=600.0 if args.callgrind else 60.0,
        )
        with server:
            if args.callgrind:
                params["callgrind_pid"] = server.pid
            specs = specs_for(server, ids, 1, params)
            outcome = run_workers("bench.quic_cpu:load", specs, server.pid)
        extra = {}
        if args.callgrind:
            instructions = _window_instructions(dumps)
            extra["server_instructions"] = instructions
    done = int(outcome.total("calls"))
    if "server_instructions" in extra:
        extra["server_kinstr_per_call"] = extra["server_instructions"] / 1000 / max(done, 1)
    per_call = 1e6 / max(done, 1)
    return {
        **extra,
        "instances": args.instances,
        "calls_done": done,
        "window_s": outcome.window_s,
        "calls_per_s": done / max(outcome.window_s, 1e-9),
        "server_us_per_call": outcome.cpu["server_cpu_s"] * per_call,
        "server_reactor_us_per_call": outcome.cpu["server_reactor_cpu_s"] * per_call,
        "client_us_per_call": outcome.client_cpu_s * per_call,
        **latency_summary(outcome.merged("latencies")),
        **outcome.cpu,
    }


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--operation", choices=OPERATIONS, default="checkpoint")
    p.add_argument("--calls", type=int, default=10_000, help="K calls per connection")
    p.add_argument("--warmup", type=int, default=500, help="calls before the window opens")
    p.add_argument("--instances", type=int, default=1, help="N connections side by side")
    p.add_argument("--state-bytes", type=int, default=100, help="B bytes per checkpoint state")
    p.add_argument(
        "--callgrind",
        action="store_true",
        help="run the server under valgrind --tool=callgrind and report its instructions "
        "per call in the window (slow: use a few thousand calls)",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    params = {
        "operation": args.operation,
        "calls": args.calls,
        "warmup": args.warmup,
        "instances": args.instances,
        "state_bytes": args.state_bytes,
    }
    if args.callgrind and shutil.which("callgrind_control") is None:
        raise SystemExit("--callgrind needs valgrind (callgrind_control) on the PATH")
    tag = f"{args.operation}-n{args.instances}"
    return main_for(SCENARIO, tag, args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
