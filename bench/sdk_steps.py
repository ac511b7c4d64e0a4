"""SDK steps: N workflows of S steps run through ``runtara.sdk.run_workflow``, as a user runs them.

Each workflow is a new instance with its own ``SdkConfig`` (instance id,
tenant, the server's address and certificate; every other setting at its
default). ``run_workflow`` connects, registers, runs the workflow function
and reports ``completed``; the function awaits S ``workflow.step`` calls in
a row, each returning the same B-byte ``bytes`` value (``--step-bytes``).
K workflows are in flight at once (``--in-flight``): K coroutines on the
load process's reactor, each starting the next workflow as soon as its
previous one ended, until N (``--workflows``) have run.

Reported: steps/s and workflows/s over the common window, the latency of
one ``workflow.step`` call (p50/p99/p99.9), of one whole ``run_workflow``
call, and the part of it that is not steps (connect, register, the
``completed`` report, close), plus server/client/other CPU.

    python -m bench.sdk_steps --engine sqlite --in-flight 16 --workflows 200 --steps 10

Only the public SDK (``runtara.sdk``) is used on the client side, so the
scenario also runs against a runtara installed from another checkout
(``bench.ab``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench._common import (
    TENANT,
    ServerProcess,
    base_parser,
    latency_summary,
    main_for,
    scratch_database,
    workdir,
)
from bench._workers import WorkerContext, WorkerSpec, gather, run_workers, split

SCENARIO = "sdk_steps"

COLUMNS = [
    ("steps_per_s", "steps/s", ",.0f"),
    ("workflows_per_s", "workflows/s", ",.1f"),
    ("workflows_done", "done", "d"),
    ("step_p50_ms", "step p50 ms", ".2f"),
    ("step_p99_ms", "step p99 ms", ".2f"),
    ("workflow_p50_ms", "wf p50 ms", ".1f"),
    ("overhead_p50_ms", "wf-steps p50 ms", ".1f"),
    ("connect_p50_ms", "connect p50 ms", ".1f"),
    ("close_p50_ms", "close p50 ms", ".1f"),
    ("server_cpu_pct", "server cpu%", ".0f"),
    ("client_cpu_pct", "client cpu%", ".0f"),
    ("other_cpu_pct", "other cpu%", ".0f"),
]


def default_workflows(in_flight: int) -> int:
    """Workflows per run when not given: enough for a window of a few seconds."""
    return max(50, 12 * in_flight)


async def load(ctx: WorkerContext) -> dict[str, Any]:
    """K slots run this process's workflows through ``run_workflow``, one after another."""
    from twisted.internet.defer import Deferred

    from runtara.sdk import InstanceClient, SdkConfig, Status, execute_workflow, run_workflow

    steps, in_flight = ctx.params["steps"], ctx.params["in_flight"]
    breakdown = ctx.params["breakdown"]
    result = os.urandom(ctx.params["step_bytes"])
    pending = iter(ctx.spec.instance_ids)
    step_seconds: list[float] = []
    workflow_seconds: list[float] = []
    overhead_seconds: list[float] = []
    parts: dict[str, list[float]] = {"connect": [], "execute": [], "close": []}

    def workflow_timing_into(own_steps: list[float]) -> Any:
        """The workflow function: S steps in a row, each one's latency kept in ``own_steps``."""

        async def steps_in_a_row(workflow: Any) -> int:
            for k in range(steps):
                begin = time.perf_counter()
                value = await workflow.step(f"step-{k}", lambda: result)
                own_steps.append(time.perf_counter() - begin)
                if value != result:
                    raise RuntimeError(f"step-{k} of {workflow.instance_id} returned another value")
            return steps

        return steps_in_a_row

    async def run_in_parts(fn: Any, config: Any) -> Any:
        """What ``run_workflow`` does (connect, execute, close), each part timed.

        As ``run_workflow``, it does not wait for the connection's closing
        period: "close" is what starting the close costs the workflow.
        """
        begin = time.perf_counter()
        client = await InstanceClient.connect(ctx.reactor, config)
        connected = time.perf_counter()
        try:
            outcome = await execute_workflow(client, ctx.reactor, fn)
        finally:
            executed = time.perf_counter()
            Deferred.fromCoroutine(client.close()).addErrback(lambda failure: None)
        parts["connect"].append(connected - begin)
        parts["execute"].append(executed - connected)
        parts["close"].append(time.perf_counter() - executed)
        return outcome

    async def slot() -> None:
        for instance_id in pending:
            config = SdkConfig(
                instance_id=instance_id,
                tenant_id=TENANT,
                server_host=ctx.spec.host,
                server_port=ctx.spec.port,
                ca_file=ctx.spec.cafile,
            )
            own_steps: list[float] = []
            fn = workflow_timing_into(own_steps)
            begin = time.perf_counter()
            if breakdown:
                outcome = await run_in_parts(fn, config)
            else:
                outcome = await run_workflow(ctx.reactor, fn, config)
            elapsed = time.perf_counter() - begin
            if outcome.status is not Status.COMPLETED:
                raise RuntimeError(f"{instance_id} ended {outcome.status}: {outcome.error}")
            step_seconds.extend(own_steps)
            workflow_seconds.append(elapsed)
            overhead_seconds.append(elapsed - sum(own_steps))

    await ctx.start()
    await gather(slot() for _ in range(in_flight))
    return ctx.finish(
        step_seconds=step_seconds,
        workflow_seconds=workflow_seconds,
        overhead_seconds=overhead_seconds,
        **{f"{part}_seconds": values for part, values in parts.items()},
        completed=len(workflow_seconds),
    )


def worker_specs(
    server: ServerProcess, instance_ids: list[str], in_flight: int, procs: int, params: dict
) -> list[WorkerSpec]:
    """One spec per load process: its share of the workflows and of the K slots."""
    procs = max(1, min(procs, in_flight, len(instance_ids)))
    slots = [len(share) for share in split(list(range(in_flight)), procs)]
    return [
        WorkerSpec(
            index,
            server.host,
            server.port,
            server.cafile,
            share,
            {**params, "in_flight": slots[index]},
        )
        for index, share in enumerate(split(instance_ids, procs))
    ]


def run_once(args: argparse.Namespace, index: int) -> dict[str, Any]:
    workflows = args.workflows or default_workflows(args.in_flight)
    instance_ids = [f"sdk-{os.getpid()}-{index}-w{w}" for w in range(workflows)]
    params = {"steps": args.steps, "step_bytes": args.step_bytes, "breakdown": args.breakdown}
    procs = args.client_procs or 1
    with workdir() as directory, scratch_database(args.engine, directory, args.pg_url) as db:
        with ServerProcess(
            db.url,
            directory / "state",
            max_instances=args.in_flight + 16,
            pool_size=args.pool_size,
            switch_interval=args.server_switch_interval,
            udp_rcvbuf=args.server_udp_rcvbuf,
        ) as server:
            specs = worker_specs(server, instance_ids, args.in_flight, procs, params)
            outcome = run_workers("bench.sdk_steps:load", specs, server.pid)
    completed = int(outcome.total("completed"))
    window = max(outcome.window_s, 1e-9)
    return {
        "in_flight": args.in_flight,
        "workflows_asked": workflows,
        "workflows_done": completed,
        "steps_done": len(outcome.merged("step_seconds")),
        "client_procs": len(specs),
        "window_s": outcome.window_s,
        "steps_per_s": completed * args.steps / window,
        "workflows_per_s": completed / window,
        **latency_summary(outcome.merged("step_seconds"), "step"),
        **latency_summary(outcome.merged("workflow_seconds"), "workflow"),
        **latency_summary(outcome.merged("overhead_seconds"), "overhead"),
        **latency_summary(outcome.merged("connect_seconds"), "connect"),
        **latency_summary(outcome.merged("execute_seconds"), "execute"),
        **latency_summary(outcome.merged("close_seconds"), "close"),
        **outcome.cpu,
        **outcome.client_fields(),
    }


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__.split("\n", 1)[0])
    p.add_argument("--in-flight", type=int, default=16, help="K workflows in flight at once")
    p.add_argument(
        "--workflows",
        type=int,
        default=0,
        help="N workflows per run (0: max(50, 12 x K))",
    )
    p.add_argument("--steps", type=int, default=10, help="S steps per workflow")
    p.add_argument("--step-bytes", type=int, default=100, help="B bytes returned by each step")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="run each workflow as InstanceClient.connect + execute_workflow + close "
        "(what run_workflow does) and report the three parts' latencies",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.in_flight < 1 or args.steps < 1:
        raise SystemExit("--in-flight and --steps must be at least 1")
    workflows = args.workflows or default_workflows(args.in_flight)
    params = {
        "workflows": workflows,
        "in_flight": args.in_flight,
        "steps": args.steps,
        "step_bytes": args.step_bytes,
        "client_procs": min(args.client_procs or 1, args.in_flight),
        "breakdown": args.breakdown,
    }
    tag = f"k{args.in_flight}-s{args.steps}"
    return main_for(SCENARIO, tag, args, params, run_once, COLUMNS)


if __name__ == "__main__":
    main()
