"""A/B: one scenario against runtara of another commit and of this checkout, in one run.

    python -m bench.ab --base main --runs 5 -- bench.sdk_steps --engine sqlite --in-flight 16

- **base**: the commit ``--base`` names is checked out into a scratch git
  worktree and installed (``pip install <checkout>``: runtara and the
  dependencies that commit declares) into a venv of its own; the worktree
  is removed again (the install is a copy). The venv is cached under
  ``bench/results/ab-venvs/<commit>/`` (``--cache-dir``) and reused by
  later runs; ``--rebuild`` makes it afresh.
- **current**: runtara of this checkout's working tree, as the scenarios
  always run it.
- **the scenario code is the same for both**: this checkout's ``bench/``,
  copied once into a scratch directory that holds nothing else. Both sides
  run ``python -m <scenario>`` from there: the base side with the base
  venv's Python (``bench`` from the copy, ``runtara`` from the venv), the
  current side with this Python and ``PYTHONPATH`` = this checkout
  (``bench`` from the copy, ``runtara`` from the checkout). Scenarios must
  therefore use only runtara APIs that both commits have.

R rounds (``--runs``), each one run of each side (the scenario's own
``--runs 1 --quiet --output FILE``, appended after the scenario's
arguments, so they win), alternating which side goes first (base, current,
current, base, ...) so that a drift of the machine during the session
falls on both. Printed: the median of each value of the scenario's JSON
``median`` map for both sides and current/base; the scenario's own table
columns by default (``--keys all`` for every value). JSON goes to
``bench/results/ab-<scenario>-<stamp>.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import REPO, RESULTS_DIR, machine_info, medians, text_table

SIDES = ("base", "current")
READY_MARKER = "ready"
_PROBE = "import bench, runtara; print(runtara.__file__); print(bench.__file__)"


@dataclass
class Side:
    """How to run the scenario against one runtara."""

    name: str
    python: str
    env: dict[str, str]
    commit: str
    runtara_file: str = ""


def git(*arguments: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(arguments)} failed:\n{done.stderr.strip()}")
    return done.stdout.strip()


def base_venv(commit: str, cache_dir: Path, extras: list[str], rebuild: bool) -> Path:
    """A venv with runtara of ``commit`` installed (made once, then reused); its directory."""
    home = cache_dir / commit
    venv = home / "venv"
    marker = home / READY_MARKER
    wanted = "\n".join([commit, *extras]) + "\n"
    if marker.exists() and marker.read_text("utf-8") == wanted and not rebuild:
        return venv
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    source = home / "src"
    print(f"building the base venv for {commit[:12]} in {venv} ...", flush=True)
    git("worktree", "add", "--detach", str(source), commit)
    try:
        _run([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        _run([*pip, str(source), *extras])
    finally:
        git("worktree", "remove", "--force", str(source))
    marker.write_text(wanted, "utf-8")
    return venv


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def copy_bench(directory: Path) -> Path:
    """This checkout's ``bench/`` (without results) copied into ``directory``; the copy's root."""
    shutil.copytree(
        REPO / "bench",
        directory / "bench",
        ignore=shutil.ignore_patterns("results", "__pycache__"),
    )
    return directory


def sides(venv: Path, base_commit: str) -> list[Side]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    current = dirty_commit()
    return [
        Side("base", str(venv / "bin" / "python"), dict(env), base_commit),
        Side("current", sys.executable, {**env, "PYTHONPATH": str(REPO)}, current),
    ]


def dirty_commit() -> str:
    """HEAD's commit, with ``+dirty`` when runtara's tree has uncommitted changes."""
    head = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "runtara", "sql", "twisted", "setup.cfg")
    return f"{head}+dirty" if changed else head


def probe(side: Side, code_root: Path) -> None:
    """Which runtara and which bench each side imports; refuses a mix-up."""
    done = subprocess.run(
        [side.python, "-c", _PROBE],
        cwd=code_root,
        env=side.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{side.name}: cannot import runtara and bench:\n{done.stderr}")
    runtara_file, bench_file = done.stdout.split()
    if not Path(bench_file).is_relative_to(code_root):
        raise SystemExit(f"{side.name} imports bench from {bench_file}, not from the copy")
    expected = REPO if side.name == "current" else Path(side.python).parent.parent
    if not Path(runtara_file).is_relative_to(expected):
        raise SystemExit(f"{side.name} imports runtara from {runtara_file}, not from {expected}")
    side.runtara_file = runtara_file
    print(f"{side.name:>7}: {side.commit[:12]}  runtara from {Path(runtara_file).parent}")


def run_scenario(
    side: Side, code_root: Path, scenario: str, options: list[str], output: Path
) -> dict[str, float]:
    command = [side.python, "-m", scenario, *options, "--runs", "1", "--quiet"]
    command += ["--output", str(output)]
    done = subprocess.run(
        command, cwd=code_root, env=side.env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{side.name}: {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(output.read_text("utf-8"))["median"]


def order_of(round_index: int) -> tuple[str, ...]:
    """Base first in even rounds, current first in odd ones (base, current, current, base...)."""
    return SIDES if round_index % 2 == 0 else tuple(reversed(SIDES))


def shown_keys(
    scenario: str, summary: dict[str, dict[str, float]], keys: str
) -> list[tuple[str, str]]:
    """(key, format) of the values to print: ``--keys``, else the scenario's table columns."""
    common = [key for key in summary["base"] if key in summary["current"]]
    if keys == "all":
        return [(key, ".4g") for key in common]
    if keys:
        return [(key, ".4g") for key in keys.split(",") if key in common]
    columns = getattr(importlib.import_module(scenario), "COLUMNS", None)
    if not columns:
        return [(key, ".4g") for key in common]
    return [(key, spec) for key, _, spec in columns if key in common]


def table(
    scenario: str, rounds: int, summary: dict, ratio: dict, keys: list[tuple[str, str]]
) -> str:
    headers = ["value", "base", "current", "current/base"]
    body = []
    for key, spec in keys:
        spec = spec.replace("d", ".0f") if spec.endswith("d") else spec
        cells = [key, format(summary["base"][key], spec), format(summary["current"][key], spec)]
        cells.append("-" if ratio.get(key) is None else f"{ratio[key]:.2f}")
        body.append(cells)
    return text_table(f"{scenario}: medians of {rounds} interleaved run(s) per side", headers, body)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        usage="python -m bench.ab --base REF [options] -- SCENARIO [scenario options]",
    )
    p.add_argument("--base", required=True, help="git ref of the base (a branch, tag or commit)")
    p.add_argument("--runs", type=int, default=3, help="rounds: runs per side")
    p.add_argument(
        "--keys", default="", help="comma-separated values to show, or 'all' (default: columns)"
    )
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        help="another requirement to install into the base venv (e.g. dbos==3.4.0); repeatable",
    )
    p.add_argument("--cache-dir", type=Path, default=RESULTS_DIR / "ab-venvs")
    p.add_argument("--rebuild", action="store_true", help="make the base venv afresh")
    p.add_argument("--output", type=Path, default=None, help="JSON file to write")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(harness options, scenario module, scenario options) from ``... -- SCENARIO ...``."""
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("usage: python -m bench.ab --base REF [options] -- SCENARIO [options]")
    cut = argv.index("--")
    scenario = argv[cut + 1]
    if not scenario.startswith("bench."):
        scenario = f"bench.{scenario}"
    return argv[:cut], scenario, argv[cut + 2 :]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    own, scenario, options = split_argv(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    base_commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    venv = base_venv(base_commit, args.cache_dir.resolve(), args.extra, args.rebuild)
    results: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="runtara-ab-") as scratch:
        code_root = copy_bench(Path(scratch))
        by_name = {side.name: side for side in sides(venv, base_commit)}
        for side in by_name.values():
            probe(side, code_root)
        for index in range(args.runs):
            for name in order_of(index):
                began = time.monotonic()
                output = Path(scratch) / f"{name}-{index}.json"
                median = run_scenario(by_name[name], code_root, scenario, options, output)
                results[name].append(median)
                print(
                    f"  round {index + 1}/{args.runs} {name}: {time.monotonic() - began:.0f} s",
                    flush=True,
                )
    summary = {side: medians(results[side]) for side in SIDES}
    ratio = {
        key: summary["current"][key] / summary["base"][key]
        for key in summary["base"]
        if key in summary["current"] and summary["base"][key]
    }
    print(table(scenario, args.runs, summary, ratio, shown_keys(scenario, summary, args.keys)))
    document = {
        "scenario": scenario,
        "scenario_options": options,
        "command": [Path(sys.executable).name, "-m", "bench.ab", *(argv or sys.argv[1:])],
        "base": {"ref": args.base, "commit": base_commit, "python": by_name["base"].python},
        "sides": {
            name: {"commit": side.commit, "runtara": side.runtara_file}
            for name, side in by_name.items()
        },
        "order": [list(order_of(index)) for index in range(args.runs)],
        "machine": machine_info(),
        "runs": results,
        "median": summary,
        "ratio": ratio,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.output or RESULTS_DIR / f"ab-{scenario.removeprefix('bench.')}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", "utf-8")
    print(f"wrote {path}")
    return document


if __name__ == "__main__":
    main()
