"""runtara vs DBOS Transact: the same workflows through both, side by side in one run.

For every engine (SQLite, PostgreSQL) and every in-flight level K (1 and 16
by default), the same work runs R times through each system, interleaved:
DBOS run 1, runtara run 1, DBOS run 2, runtara run 2, ... The work: N
workflows of S steps, each step returning the same B-byte value.

- runtara: ``bench.sdk_steps`` (``runtara.sdk.run_workflow`` per workflow,
  a fresh database and a fresh ``twistd runtara-core`` per run);
- DBOS: ``bench._dbos_side`` in a process of its own per run (a
  ``@DBOS.workflow()`` of S ``@DBOS.step()`` calls, K threads calling it
  directly), on a fresh system database: a SQLite file, or a scratch
  PostgreSQL database on the same server runtara uses.

Prints engine | in flight | DBOS steps/s | runtara steps/s | runtara/DBOS
(medians of the R runs), the step latencies, and the issue's targets;
writes JSON to ``bench/results/`` (or ``--output``). DBOS is an optional,
bench-only dependency: ``pip install '.[bench]'``.

    python -m bench.peer_dbos --runs 3
    python -m bench.peer_dbos --engines sqlite --in-flight 1 --workflows 10 --runs 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import sdk_steps
from bench._common import (
    DEFAULT_PG_URL,
    PG_URL_VARIABLES,
    machine_info,
    medians,
    result_path,
    scratch_database,
    text_table,
    workdir,
)

SCENARIO = "peer_dbos"
DBOS_PIN = "3.4.0"
DBOS_RUN_TIMEOUT_S = 900.0
SIDES = ("dbos", "runtara")

TARGET_RATIO = {1: 3.0, 16: 5.0}
"""Issue 11: runtara/DBOS steps/s at least this, per in-flight level."""
TARGET_SEQUENTIAL_STEP_P50_MS = 1.0
"""Issue 11: runtara's step p50 at 1 in flight on SQLite at most this."""

ROW_VALUES = ("steps_per_s", "step_p50_ms", "step_p99_ms", "workflow_p50_ms")
"""Values of each side that go into the table rows and the flat ``median`` map."""


def dbos_run(args: argparse.Namespace, engine: str, in_flight: int) -> dict[str, Any]:
    """One DBOS run: a fresh system database, a fresh process."""
    with workdir() as directory, scratch_database(engine, directory, args.pg_url) as database:
        if engine == "sqlite":
            url = f"sqlite:///{directory / 'dbos.sqlite'}"
        else:
            url = database.pg_dsn
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
            future = executor.submit(
                _measure_in_child,
                url,
                workflows_for(args, in_flight),
                in_flight,
                args.steps,
                args.step_bytes,
            )
            return future.result(DBOS_RUN_TIMEOUT_S)


def _measure_in_child(*arguments: Any) -> dict[str, Any]:
    from bench import _dbos_side

    return _dbos_side.measure(*arguments)


def runtara_run(args: argparse.Namespace, engine: str, in_flight: int, index: int) -> dict:
    """One runtara run through the SDK (``bench.sdk_steps``)."""
    options = [
        "--engine",
        engine,
        "--in-flight",
        str(in_flight),
        "--workflows",
        str(workflows_for(args, in_flight)),
        "--steps",
        str(args.steps),
        "--step-bytes",
        str(args.step_bytes),
        "--pool-size",
        str(args.pool_size),
    ]
    if args.pg_url:
        options += ["--pg-url", args.pg_url]
    return sdk_steps.run_once(sdk_steps.parser().parse_args(options), index)


def workflows_for(args: argparse.Namespace, in_flight: int) -> int:
    return args.workflows or sdk_steps.default_workflows(in_flight)


def row_for(engine: str, in_flight: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of one (engine, K) cell, both sides, and their ratio."""
    row: dict[str, Any] = {"engine": engine, "in_flight": in_flight}
    for side in SIDES:
        summary = medians([run["values"] for run in runs if run["side"] == side])
        for key in ROW_VALUES:
            row[f"{side}_{key}"] = summary.get(key)
    row["ratio"] = row["runtara_steps_per_s"] / max(row["dbos_steps_per_s"], 1e-9)
    return row


def flat_medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``{engine}_k{K}_{value}``: every row's numbers in one map (what ``bench.ab`` compares)."""
    flat = {}
    for row in rows:
        prefix = f"{row['engine']}_k{row['in_flight']}_"
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "in_flight":
                flat[prefix + key] = value
    return flat


def table(rows: list[dict[str, Any]], runs: int) -> str:
    headers = [
        "engine",
        "in flight",
        "DBOS steps/s",
        "runtara steps/s",
        "runtara/DBOS",
        "target",
        "runtara step p50 ms",
        "runtara step p99 ms",
        "DBOS step p50 ms",
    ]
    body = []
    for row in rows:
        target = TARGET_RATIO.get(row["in_flight"])
        body.append(
            [
                row["engine"],
                str(row["in_flight"]),
                f"{row['dbos_steps_per_s']:,.0f}",
                f"{row['runtara_steps_per_s']:,.0f}",
                f"{row['ratio']:.2f}",
                "-" if target is None else f">= {target:g} ({_met(row['ratio'] >= target)})",
                f"{row['runtara_step_p50_ms']:.2f}",
                f"{row['runtara_step_p99_ms']:.2f}",
                f"{row['dbos_step_p50_ms']:.2f}",
            ]
        )
    title = f"{SCENARIO}: medians of {runs} interleaved run(s) per side"
    lines = [text_table(title, headers, body)]
    sequential = [row for row in rows if row["engine"] == "sqlite" and row["in_flight"] == 1]
    if sequential:
        p50 = sequential[0]["runtara_step_p50_ms"]
        met = _met(p50 <= TARGET_SEQUENTIAL_STEP_P50_MS)
        lines.append(
            f"runtara sequential step p50 (SQLite, 1 in flight): {p50:.2f} ms "
            f"(target <= {TARGET_SEQUENTIAL_STEP_P50_MS:g} ms: {met})"
        )
    return "\n".join(lines)


def _met(condition: bool) -> str:
    return "met" if condition else "not met"


def dbos_version() -> str:
    """The installed DBOS version; exits with how to install it when it is missing."""
    if importlib.util.find_spec("dbos") is None:
        raise SystemExit(
            "bench.peer_dbos needs DBOS Transact, an optional bench-only dependency:\n"
            f"    .venv/bin/pip install '.[bench]'   (dbos=={DBOS_PIN})"
        )
    return metadata.version("dbos")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--engines", default="sqlite,postgresql", help="comma-separated")
    p.add_argument("--in-flight", default="1,16", help="comma-separated K levels")
    p.add_argument("--runs", type=int, default=3, help="runs per side and cell; medians reported")
    p.add_argument(
        "--workflows", type=int, default=0, help="N workflows per run (0: max(50, 12 x K))"
    )
    p.add_argument("--steps", type=int, default=10, help="S steps per workflow")
    p.add_argument("--step-bytes", type=int, default=100, help="B bytes returned by each step")
    p.add_argument(
        "--pool-size", type=int, default=8, help="RUNTARA_DB_POOL_SIZE of runtara's server"
    )
    p.add_argument(
        "--pg-url",
        default=None,
        help="maintenance URL of the PostgreSQL server for scratch databases "
        f"(default: ${PG_URL_VARIABLES[0]}, ${PG_URL_VARIABLES[1]} or {DEFAULT_PG_URL})",
    )
    p.add_argument("--output", type=Path, default=None, help="JSON file to write")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    engines = [engine for engine in args.engines.split(",") if engine]
    levels = [int(level) for level in args.in_flight.split(",") if level]
    if args.runs < 1 or args.steps < 1 or not levels or min(levels) < 1:
        raise SystemExit("--runs, --steps and every --in-flight level must be at least 1")
    version = dbos_version()
    if version != DBOS_PIN and not args.quiet:
        print(f"note: DBOS {version} installed; the comparison is pinned to {DBOS_PIN}")
    runs: list[dict[str, Any]] = []
    rows = []
    for engine in engines:
        for in_flight in levels:
            cell = []
            for index in range(args.runs):
                for side in SIDES:
                    began = time.monotonic()
                    if side == "dbos":
                        values = dbos_run(args, engine, in_flight)
                    else:
                        values = runtara_run(args, engine, in_flight, index)
                    run = {
                        "engine": engine,
                        "in_flight": in_flight,
                        "run": index + 1,
                        "side": side,
                        "seconds": time.monotonic() - began,
                        "values": values,
                    }
                    cell.append(run)
                    if not args.quiet:
                        print(
                            f"  {engine} K={in_flight} run {index + 1}/{args.runs} {side}: "
                            f"{values['steps_per_s']:,.0f} steps/s, "
                            f"step p50 {values['step_p50_ms']:.2f} ms",
                            flush=True,
                        )
            runs += cell
            rows.append(row_for(engine, in_flight, cell))
    print(table(rows, args.runs))
    document = {
        "scenario": SCENARIO,
        "engines": engines,
        "params": {
            "in_flight": levels,
            "workflows": {str(k): workflows_for(args, k) for k in levels},
            "steps": args.steps,
            "step_bytes": args.step_bytes,
            "runs": args.runs,
            "pool_size": args.pool_size,
            "dbos_dispatch": "K threads calling the @DBOS.workflow function directly",
        },
        "command": [Path(sys.executable).name, "-m", f"bench.{SCENARIO}", *sys.argv[1:]],
        "machine": {
            **machine_info("postgresql" if "postgresql" in engines else None, args.pg_url),
            "dbos": version,
        },
        "targets": {
            "ratio_at_in_flight": TARGET_RATIO,
            "sequential_step_p50_ms_sqlite": TARGET_SEQUENTIAL_STEP_P50_MS,
        },
        "rows": rows,
        "runs": runs,
        "median": flat_medians(rows),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = args.output or result_path(SCENARIO, "-".join(engines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    print(f"wrote {path}")
    return document


if __name__ == "__main__":
    main()
