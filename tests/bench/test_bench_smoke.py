"""Smoke test of the benchmarks: every scenario once, at a tiny size (no timing assertions).

Each scenario runs as a user runs it, ``python -m bench.<scenario> ...`` from
the checkout, with one run and tiny sizes, on SQLite and, when
``RUNTARA_TEST_POSTGRES_URL`` names a server, on PostgreSQL (scratch
databases are created and dropped by the benchmark itself). The test checks
the JSON it writes: the expected keys, the counts asked for, ratios > 0.

``bench.peer_dbos`` needs DBOS Transact, an optional extra (``.[bench]``) that
CI does not install: its run is skipped without it, and the message that
says how to install it is checked instead. ``bench.ab`` builds a venv of the
base commit (a ``pip install`` of a git worktree, about 20 s here), so its
test needs a git checkout and a reachable package index.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_VARIABLE = "RUNTARA_TEST_POSTGRES_URL"
TIMEOUT_S = 120
AB_TIMEOUT_S = 600  # includes making the base venv (pip install of the checkout)


def _postgres_marks() -> list[Any]:
    try:
        from tests.pg import postgres_marks
    except ImportError:
        marks = [pytest.mark.postgres]
        if not os.environ.get(PG_VARIABLE, "").strip():
            marks.append(pytest.mark.skip(reason=f"PostgreSQL benchmarks need {PG_VARIABLE}"))
        return marks
    return postgres_marks()


ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=_postgres_marks()),
]


def run_bench(scenario: str, engine: str, tmp_path: Path, *options: str) -> dict[str, Any]:
    output = tmp_path / f"{scenario}-{engine}.json"
    command = [
        sys.executable,
        "-m",
        f"bench.{scenario}",
        "--engine",
        engine,
        "--runs",
        "1",
        "--quiet",
        "--output",
        str(output),
        *options,
    ]
    if engine == "postgresql":
        command += ["--pg-url", os.environ[PG_VARIABLE]]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    document = json.loads(output.read_text("utf-8"))
    assert document["scenario"] == scenario
    assert document["engine"] == engine
    assert len(document["runs"]) == 1
    assert document["machine"]["nproc"] >= 1
    assert f"bench.{scenario}" in document["command"]
    assert "median" in done.stdout  # the table was printed
    return document


def _positive(run: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(run[key], (int, float)) and run[key] > 0, (key, run.get(key))


@pytest.mark.parametrize("engine", ENGINES)
def test_checkpoint_throughput(engine: str, tmp_path: Path) -> None:
    document = run_bench(
        "checkpoint_throughput",
        engine,
        tmp_path,
        *("--instances", "2", "--checkpoints", "5", "--state-bytes", "100"),
    )
    run = document["runs"][0]
    assert run["checkpoints_asked"] == run["checkpoints_done"] == 10
    assert run["found_true"] == 0
    assert run["limit_rows"] == 10
    _positive(run, "checkpoints_per_s", "limit_rows_per_s", "ratio", "latency_p50_ms")
    assert run["latency_p50_ms"] <= run["latency_p99_ms"] <= run["latency_p999_ms"]
    assert run["server_cpu_s"] >= 0 and 0 <= run["machine_busy_pct"] <= 100
    assert document["median"]["ratio"] == run["ratio"]


@pytest.mark.parametrize("engine", ENGINES)
def test_checkpoint_throughput_against_two_workers(engine: str, tmp_path: Path) -> None:
    document = run_bench(
        "checkpoint_throughput",
        engine,
        tmp_path,
        *("--instances", "4", "--checkpoints", "5", "--workers", "2", "--no-limit"),
    )
    run = document["runs"][0]
    assert document["params"]["workers"] == 2
    assert run["checkpoints_asked"] == run["checkpoints_done"] == 20
    _positive(run, "checkpoints_per_s", "latency_p50_ms")
    assert run["server_cpu_s"] >= 0


def test_quic_cpu(tmp_path: Path) -> None:
    document = run_bench(
        "quic_cpu", "sqlite", tmp_path, *("--calls", "100", "--warmup", "5", "--instances", "2")
    )
    run = document["runs"][0]
    assert run["calls_done"] == 200
    _positive(run, "client_us_per_call", "calls_per_s", "latency_p50_ms")
    assert run["server_reactor_us_per_call"] <= run["server_us_per_call"]


@pytest.mark.parametrize("engine", ENGINES)
def test_replay(engine: str, tmp_path: Path) -> None:
    document = run_bench("replay", engine, tmp_path, *("--instances", "2", "--checkpoints", "5"))
    run = document["runs"][0]
    assert run["replayed_asked"] == run["replayed"] == run["found_true"] == 10
    assert run["state_mismatches"] == 0
    _positive(run, "reads_per_s", "latency_p50_ms", "register_p50_ms")


@pytest.mark.parametrize("engine", ENGINES)
def test_workflow_roundtrip(engine: str, tmp_path: Path) -> None:
    document = run_bench(
        "workflow_roundtrip",
        engine,
        tmp_path,
        *("--instances", "2", "--workflows", "2", "--steps", "5"),
    )
    run = document["runs"][0]
    assert run["workflows_asked"] == run["workflows_done"] == 4
    _positive(run, "workflows_per_s", "calls_per_s", "workflow_p50_ms")


@pytest.mark.parametrize("engine", ENGINES)
def test_signal_latency(engine: str, tmp_path: Path) -> None:
    document = run_bench(
        "signal_latency",
        engine,
        tmp_path,
        *("--instances", "2", "--interval-ms", "20", "--warmup-ms", "50"),
    )
    run = document["runs"][0]
    assert run["signals_sent"] == run["signals_seen"] == 2
    assert run["sent_via"]
    _positive(run, "signal_p50_ms", "send_commit_p50_ms", "checkpoint_p50_ms")


@pytest.mark.parametrize("engine", ENGINES)
def test_sleep_accuracy(engine: str, tmp_path: Path) -> None:
    document = run_bench(
        "sleep_accuracy",
        engine,
        tmp_path,
        *("--instances", "20", "--sleep-ms", "300", "--instances-per-connection", "5"),
    )
    run = document["runs"][0]
    assert run["woken"] == 20
    assert run["lateness_min_ms"] > -50  # never woken (much) before wake_at, clock granularity
    assert run["lateness_p50_ms"] <= run["lateness_p99_ms"]


@pytest.mark.parametrize("engine", ENGINES)
def test_sdk_steps(engine: str, tmp_path: Path) -> None:
    document = run_bench(
        "sdk_steps",
        engine,
        tmp_path,
        *("--in-flight", "2", "--workflows", "3", "--steps", "4", "--step-bytes", "100"),
    )
    run = document["runs"][0]
    assert run["workflows_asked"] == run["workflows_done"] == 3
    assert run["steps_done"] == 12
    assert run["in_flight"] == 2
    _positive(run, "steps_per_s", "workflows_per_s", "step_p50_ms", "workflow_p50_ms")
    assert run["step_p50_ms"] <= run["step_p99_ms"]
    # A workflow is its steps plus connect, register, the completed report and close.
    assert run["workflow_p50_ms"] > run["overhead_p50_ms"] > 0


def test_sdk_steps_breakdown(tmp_path: Path) -> None:
    document = run_bench(
        "sdk_steps",
        "sqlite",
        tmp_path,
        *("--in-flight", "1", "--workflows", "2", "--steps", "3", "--breakdown"),
    )
    run = document["runs"][0]
    assert run["workflows_done"] == 2
    _positive(run, "connect_p50_ms", "execute_p50_ms", "close_p50_ms")
    assert run["execute_p50_ms"] < run["workflow_p50_ms"]


def _dbos_installed() -> bool:
    return importlib.util.find_spec("dbos") is not None


@pytest.mark.parametrize("engine", ENGINES)
def test_peer_dbos(engine: str, tmp_path: Path) -> None:
    if not _dbos_installed():
        pytest.skip("DBOS Transact is an optional extra (pip install '.[bench]'); not installed")
    output = tmp_path / "peer.json"
    command = [
        sys.executable,
        "-m",
        "bench.peer_dbos",
        *("--engines", engine, "--in-flight", "1,2", "--workflows", "3", "--steps", "4"),
        *("--runs", "1", "--quiet", "--output", str(output)),
    ]
    if engine == "postgresql":
        command += ["--pg-url", os.environ[PG_VARIABLE]]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "runtara/DBOS" in done.stdout
    document = json.loads(output.read_text("utf-8"))
    assert [(run["in_flight"], run["side"]) for run in document["runs"]] == [
        (1, "dbos"),
        (1, "runtara"),
        (2, "dbos"),
        (2, "runtara"),
    ]
    for run in document["runs"]:
        assert run["values"]["workflows_done"] == 3
        assert run["values"]["steps_done"] == 12
    assert document["runs"][0]["values"]["dbos_workflows_recorded"] == 3
    assert [(row["engine"], row["in_flight"]) for row in document["rows"]] == [
        (engine, 1),
        (engine, 2),
    ]
    for row in document["rows"]:
        _positive(row, "dbos_steps_per_s", "runtara_steps_per_s", "ratio")
        assert row["ratio"] == pytest.approx(row["runtara_steps_per_s"] / row["dbos_steps_per_s"])
    assert document["median"][f"{engine}_k2_ratio"] == document["rows"][1]["ratio"]
    assert document["machine"]["dbos"]


def test_peer_dbos_says_how_to_install_dbos(tmp_path: Path) -> None:
    if _dbos_installed():
        pytest.skip("DBOS is installed: this checks the message given without it")
    done = subprocess.run(
        [sys.executable, "-m", "bench.peer_dbos", "--runs", "1", "--output", str(tmp_path / "x")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode != 0
    assert ".[bench]" in done.stderr
    assert not (tmp_path / "x").exists()


def _git_head() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_ab_runs_the_scenario_against_both_checkouts(tmp_path: Path) -> None:
    head = _git_head()
    if head is None:
        pytest.skip("bench.ab needs a git checkout (it makes a worktree of the base commit)")
    output = tmp_path / "ab.json"
    cache = tmp_path / "cache"
    command = [
        sys.executable,
        "-m",
        "bench.ab",
        *("--base", "HEAD", "--runs", "2", "--cache-dir", str(cache), "--output", str(output)),
        *("--", "sdk_steps", "--in-flight", "1", "--workflows", "2", "--steps", "3"),
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=AB_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "current/base" in done.stdout
    document = json.loads(output.read_text("utf-8"))
    assert document["base"]["commit"] == head
    assert document["order"] == [["base", "current"], ["current", "base"]]
    base_runtara = Path(document["sides"]["base"]["runtara"])
    assert base_runtara.is_relative_to(cache / head / "venv")
    assert Path(document["sides"]["current"]["runtara"]).is_relative_to(REPO / "runtara")
    for side in ("base", "current"):
        assert len(document["runs"][side]) == 2
        assert [run["workflows_done"] for run in document["runs"][side]] == [2, 2]
        _positive(document["median"][side], "steps_per_s", "step_p50_ms")
    assert document["ratio"]["steps_per_s"] == pytest.approx(
        document["median"]["current"]["steps_per_s"] / document["median"]["base"]["steps_per_s"]
    )
    worktrees = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert str(cache) not in worktrees  # the scratch worktree was removed after the install
