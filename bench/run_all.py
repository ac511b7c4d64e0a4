"""Run the whole benchmark matrix and write the medians as JSON and Markdown.

    python -m bench.run_all                       # both engines, 3 runs each
    python -m bench.run_all --engines sqlite --runs 1 --only checkpoint_throughput

Every configuration runs as its own command (``python -m bench.<scenario>
... --output``), exactly as documented in ``bench/README.md``, so a line of
the summary can be reproduced alone. Output: ``bench/results/run-<stamp>/``
with one JSON per configuration, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, RESULTS_DIR, machine_cpu, machine_info

# (N, K) per state size: K chosen so that one run takes a few seconds.
THROUGHPUT = {
    100: [(1, 3000), (16, 300), (64, 100), (256, 24)],
    65536: [(1, 500), (16, 40), (64, 12), (256, 4)],
}


def matrix(engine: str) -> list[tuple[str, str, str, list[str]]]:
    """(scenario, label, options) of every configuration for ``engine``."""
    configs = []
    for state_bytes, sizes in THROUGHPUT.items():
        for instances, checkpoints in sizes:
            configs.append(
                (
                    "checkpoint_throughput",
                    f"n{instances}-b{state_bytes}",
                    [
                        "--instances",
                        str(instances),
                        "--checkpoints",
                        str(checkpoints),
                        "--state-bytes",
                        str(state_bytes),
                    ],
                )
            )
    configs += [
        (
            "checkpoint_throughput",
            "n64-b100-w2",
            ["--instances", "64", "--checkpoints", "100", "--state-bytes", "100", "--workers", "2"],
        ),
        ("quic_cpu", "checkpoint-k10000", ["--calls", "10000"]),
        ("replay", "n64-k100", ["--instances", "64", "--checkpoints", "100"]),
        ("replay", "n1-k3000", ["--instances", "1", "--checkpoints", "3000"]),
        (
            "workflow_roundtrip",
            "n16-w40-k10",
            ["--instances", "16", "--workflows", "40", "--steps", "10"],
        ),
        ("signal_latency", "n16", ["--instances", "16", "--interval-ms", "50"]),
        ("sleep_accuracy", "n1000-2s", ["--instances", "1000", "--sleep-ms", "2000"]),
    ]
    return [(engine, scenario, label, options) for scenario, label, options in configs]


# What summary.md shows per scenario: (key, header, format).
SUMMARY_COLUMNS = {
    "checkpoint_throughput": [
        ("instances", "N", "d"),
        ("checkpoints_per_s", "ckpt/s", ",.0f"),
        ("limit_rows_per_s", "db limit/s", ",.0f"),
        ("ratio", "engine/limit", ".2f"),
        ("latency_p50_ms", "p50 ms", ".2f"),
        ("latency_p99_ms", "p99 ms", ".1f"),
        ("latency_p999_ms", "p99.9 ms", ".1f"),
        ("server_cpu_pct", "server cpu %", ".0f"),
        ("client_cpu_pct", "client cpu %", ".0f"),
        ("other_cpu_pct", "other cpu %", ".0f"),
    ],
    "quic_cpu": [
        ("calls_done", "calls", "d"),
        ("server_us_per_call", "server us/call", ".0f"),
        ("server_reactor_us_per_call", "reactor us/call", ".0f"),
        ("client_us_per_call", "client us/call", ".0f"),
        ("calls_per_s", "calls/s", ",.0f"),
    ],
    "replay": [
        ("instances", "N", "d"),
        ("reads_per_s", "replayed ckpt/s", ",.0f"),
        ("latency_p50_ms", "p50 ms", ".2f"),
        ("latency_p99_ms", "p99 ms", ".1f"),
        ("register_p50_ms", "resume register p50 ms", ".1f"),
        ("server_cpu_pct", "server cpu %", ".0f"),
    ],
    "workflow_roundtrip": [
        ("instances", "slots", "d"),
        ("workflows_per_s", "workflows/s", ",.1f"),
        ("calls_per_s", "calls/s", ",.0f"),
        ("workflow_p50_ms", "workflow p50 ms", ".1f"),
        ("workflow_p99_ms", "workflow p99 ms", ".1f"),
        ("server_cpu_pct", "server cpu %", ".0f"),
    ],
    "signal_latency": [
        ("instances", "N", "d"),
        ("signal_p50_ms", "p50 ms", ".1f"),
        ("signal_p99_ms", "p99 ms", ".1f"),
        ("signal_max_ms", "max ms", ".1f"),
        ("send_commit_p50_ms", "send commit p50 ms", ".1f"),
        ("checkpoint_p50_ms", "loop checkpoint p50 ms", ".1f"),
    ],
    "sleep_accuracy": [
        ("instances", "sleepers", "d"),
        ("lateness_p50_ms", "late p50 ms", ".1f"),
        ("lateness_p99_ms", "late p99 ms", ".1f"),
        ("lateness_max_ms", "late max ms", ".1f"),
        ("sleep_start_spread_ms", "wake_at spread ms", ".0f"),
        ("server_cpu_pct", "server cpu %", ".0f"),
    ],
}


def command_for(scenario: str, engine: str, options: list[str], runs: int, output: Path) -> list:
    return [
        sys.executable,
        "-m",
        f"bench.{scenario}",
        "--engine",
        engine,
        "--runs",
        str(runs),
        *options,
        "--quiet",
        "--output",
        str(output),
    ]


def markdown(entries: list[dict[str, Any]]) -> str:
    lines = []
    for scenario, columns in SUMMARY_COLUMNS.items():
        rows = [entry for entry in entries if entry["scenario"] == scenario]
        if not rows:
            continue
        lines += [f"### {scenario}", ""]
        headers = ["engine", "config", *(header for _, header, _ in columns)]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        for entry in rows:
            median = entry.get("median", {})
            cells = [entry["engine"], entry["label"]]
            for key, _, spec in columns:
                value = median.get(key)
                if entry.get("error"):
                    cells.append("error")
                elif value is None:
                    cells.append("-")
                else:
                    cells.append(format(int(value) if spec == "d" else value, spec))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def busy_percent(seconds: float = 1.0) -> float:
    """How busy the machine was (all cores) over the next ``seconds``."""
    busy0, total0 = machine_cpu()
    time.sleep(seconds)
    busy1, total1 = machine_cpu()
    return 100 * (busy1 - busy0) / max(total1 - total0, 1e-9)


def wait_until_quiet(threshold: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) for the machine to be under ``threshold`` % busy.

    Other users of a shared box skew every number; this waits for a lull.
    Returns the last busy % seen.
    """
    deadline = time.monotonic() + max_wait
    busy = busy_percent()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_percent(2.0)
    return busy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated scenarios to run")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=15.0,
        help="before each configuration, wait for the machine to be under this %% busy",
    )
    parser.add_argument(
        "--max-wait-quiet", type=float, default=0.0, help="seconds to wait for that (0: never)"
    )
    args = parser.parse_args(argv)
    engines = [engine for engine in args.engines.split(",") if engine]
    only = {name for name in args.only.split(",") if name}
    directory = args.output_dir or RESULTS_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    directory.mkdir(parents=True, exist_ok=True)
    configs = [c for engine in engines for c in matrix(engine) if not only or c[1] in only]
    entries = []
    started = time.monotonic()
    for number, (engine, scenario, label, options) in enumerate(configs, 1):
        output = directory / f"{scenario}-{engine}-{label}.json"
        command = command_for(scenario, engine, options, args.runs, output)
        shown = " ".join(["python", *command[1:-2]])
        print(f"[{number}/{len(configs)}] {shown}", flush=True)
        busy_before = None
        if args.max_wait_quiet > 0:
            busy_before = wait_until_quiet(args.quiet_threshold, args.max_wait_quiet)
        began = time.monotonic()
        done = subprocess.run(command, cwd=REPO, check=False, text=True, capture_output=True)
        entry: dict[str, Any] = {
            "engine": engine,
            "scenario": scenario,
            "label": label,
            "command": shown,
            "seconds": time.monotonic() - began,
            "machine_busy_pct_before": busy_before,
        }
        if done.returncode == 0:
            document = json.loads(output.read_text("utf-8"))
            entry["median"] = document["median"]
            entry["runs"] = len(document["runs"])
            print(done.stdout.strip().splitlines()[-2], flush=True)
        else:
            entry["error"] = (done.stderr or done.stdout)[-3000:]
            print(f"  FAILED:\n{entry['error']}", flush=True)
        entries.append(entry)
    summary = {
        "machine": machine_info("postgresql" if "postgresql" in engines else None),
        "runs_per_config": args.runs,
        "total_seconds": time.monotonic() - started,
        "entries": entries,
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    (directory / "summary.md").write_text(markdown(entries), "utf-8")
    print(markdown(entries))
    print(f"total {summary['total_seconds']:.0f} s; wrote {directory}/summary.md")


if __name__ == "__main__":
    main()
