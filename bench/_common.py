"""What every scenario shares: the server process, scratch databases, CPU
sampling, statistics, the command line and the output (a table and JSON).

A scenario module defines ``run_once(args, run_index) -> dict`` (one run:
fresh database, fresh server, measurement, teardown) and calls
``main_for(scenario, parser, run_once, columns)`` from its ``main``; that
repeats the run ``--runs`` times, prints one table row per run plus the
medians, and writes the JSON to ``bench/results/`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_PG_URL = "postgresql://root@127.0.0.1:5432/postgres"
PG_URL_VARIABLES = ("RUNTARA_BENCH_POSTGRES_URL", "RUNTARA_TEST_POSTGRES_URL")
TENANT = "bench"
SERVER_START_TIMEOUT_S = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_database_names = itertools.count(1)


# -- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) of sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


def latency_summary(seconds: Sequence[float], prefix: str = "latency") -> dict[str, float]:
    """p50/p99/p99.9/mean/max of latencies given in seconds, reported in milliseconds."""
    values = sorted(seconds)
    if not values:
        return {}
    return {
        f"{prefix}_p50_ms": percentile(values, 0.50) * 1000,
        f"{prefix}_p99_ms": percentile(values, 0.99) * 1000,
        f"{prefix}_p999_ms": percentile(values, 0.999) * 1000,
        f"{prefix}_mean_ms": statistics.fmean(values) * 1000,
        f"{prefix}_max_ms": values[-1] * 1000,
    }


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric value the runs share (ints and floats, not bools)."""
    result: dict[str, Any] = {}
    if not runs:
        return result
    for key, first in runs[0].items():
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            continue
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
        if len(values) == len(runs):
            result[key] = statistics.median(values)
    return result


# -- CPU ---------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the main thread of process ``pid`` alone (for
    runtara-core: the reactor thread, without the database threads), from /proc."""
    return _stat_cpu_seconds(f"/proc/{pid}/task/{pid}/stat")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (runtara-core's other workers, with ``--workers``)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return [pid]
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listing:
                children.extend(int(child) for child in listing.read().split())
        except FileNotFoundError:
            continue
    return [pid, *children]


def _stat_cpu_seconds(path: str) -> float:
    with open(path, encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the ")" closing comm: state is fields[0], utime is field 14 overall -> [11].
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


def udp_receive_errors() -> int:
    """The machine's UDP datagrams dropped for a full receive buffer (RcvbufErrors)."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as snmp:
            rows = [line.split() for line in snmp if line.startswith("Udp:")]
        header, values = rows[0], rows[1]
        return int(values[header.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class CpuSample:
    """A point in time with the CPU counters of the server and of the machine
    (and the machine's count of UDP datagrams dropped on receive)."""

    at: float
    server_s: float
    machine_busy_s: float
    machine_total_s: float
    udp_drops: int = 0
    server_reactor_s: float = 0.0
    """The server's main (reactor) threads alone, without the database threads."""

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSample:
        """Now; the server is ``server_pid`` and its children (every worker process)."""
        busy, total = machine_cpu()
        pids = process_tree(server_pid) if server_pid else []
        server = sum(_cpu_or_zero(process_cpu_seconds, pid) for pid in pids)
        reactor = sum(_cpu_or_zero(main_thread_cpu_seconds, pid) for pid in pids)
        return cls(time.monotonic(), server, busy, total, udp_receive_errors(), reactor)


def _cpu_or_zero(read: Callable[[int], float], pid: int) -> float:
    try:
        return read(pid)
    except FileNotFoundError:  # a worker that ended meanwhile
        return 0.0


def cpu_between(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Server CPU (in % of one core and seconds) and machine busy % over a window."""
    wall = max(after.at - before.at, 1e-9)
    server = after.server_s - before.server_s
    total = max(after.machine_total_s - before.machine_total_s, 1e-9)
    busy = after.machine_busy_s - before.machine_busy_s
    return {
        "server_cpu_s": server,
        "server_reactor_cpu_s": after.server_reactor_s - before.server_reactor_s,
        "server_cpu_pct": 100 * server / wall,
        "machine_busy_pct": min(100.0, 100 * busy / total),
        # Datagrams the kernel dropped because a socket's receive buffer was full
        # (machine-wide; QUIC then retransmits after a probe timeout).
        "udp_rcvbuf_drops": after.udp_drops - before.udp_drops,
    }


# -- scratch databases -------------------------------------------------------------------


def pg_server_url(given: str | None) -> str:
    """The maintenance URL of the PostgreSQL server to create scratch databases on."""
    if given:
        return given
    for variable in PG_URL_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return DEFAULT_PG_URL


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@dataclass
class ScratchDatabase:
    """A fresh database for one run: its runtara URL and how the limit loop reaches it."""

    engine: str
    url: str
    """The ``--database`` URL given to runtara-core."""
    sqlite_path: Path | None = None
    """SQLite: the server's file; the limit loop writes a sibling file."""
    pg_dsn: str | None = None
    """PostgreSQL: the scratch database's DSN (the limit loop uses a table of its own)."""


@contextlib.contextmanager
def scratch_database(engine: str, workdir: Path, pg_url: str | None) -> Iterator[ScratchDatabase]:
    """A new empty database, dropped (PostgreSQL) or left in ``workdir`` (SQLite) after."""
    if engine == "sqlite":
        path = workdir / "runtara.db"
        yield ScratchDatabase("sqlite", f"sqlite://{path}", sqlite_path=path)
        return
    if engine != "postgresql":
        raise ValueError(f"unknown engine {engine!r}")
    import psycopg2

    server = pg_server_url(pg_url)
    name = f"runtara_bench_{os.getpid()}_{next(_database_names)}"
    admin = psycopg2.connect(server, connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cursor.execute(f'CREATE DATABASE "{name}"')
        dsn = _with_database(server, name)
        yield ScratchDatabase("postgresql", dsn, pg_dsn=dsn)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# -- the server process ------------------------------------------------------------------

# Experiment only (--server-udp-rcvbuf): a bigger SO_RCVBUF on the server's UDP
# socket, set from the launcher without touching runtara's code.
_RCVBUF_PATCH = (
    "import socket; from twisted.internet import udp; "
    "_create = udp.Port.createInternetSocket; "
    "udp.Port.createInternetSocket = lambda self: "
    "(lambda s: (s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, {size}), s)[1])"
    "(_create(self)); "
)

_LISTENING = re.compile(r"runtara-core listening on QUIC (\S+):(\d+)")
_ALL_WORKERS_SERVING = re.compile(r"runtara-core serving QUIC (\S+):(\d+) with \d+ worker")


class ServerProcess:
    """``twistd -n runtara-core`` in a process of its own, on 127.0.0.1 and a free port.

    Its log goes to ``<state_dir>/twistd.log``; the port is read from it.
    ``pool_size`` sets ``RUNTARA_DB_POOL_SIZE``. Every other ``RUNTARA_*``
    variable of the caller's environment is dropped, so the server runs
    with the settings named here and nothing else (no auth tokens, say).
    ``wrapper`` is put in front of the command (``valgrind --tool=callgrind``,
    say); ``start_timeout`` is how long to wait for the listening line.
    ``workers`` > 1 starts it with ``--workers`` and waits until every worker
    serves.
    """

    def __init__(
        self,
        database_url: str,
        state_dir: Path,
        *,
        max_instances: int,
        pool_size: int = 8,
        twistd_options: Sequence[str] = (),
        switch_interval: float | None = None,
        udp_rcvbuf: int | None = None,
        wrapper: Sequence[str] = (),
        start_timeout: float = SERVER_START_TIMEOUT_S,
        workers: int = 1,
    ) -> None:
        self.database_url = database_url
        self.state_dir = state_dir
        self.max_instances = max_instances
        self.pool_size = pool_size
        self.twistd_options = list(twistd_options)
        self.switch_interval = switch_interval
        self.udp_rcvbuf = udp_rcvbuf
        self.wrapper = list(wrapper)
        self.start_timeout = start_timeout
        self.workers = workers
        self.log_path = state_dir / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def cafile(self) -> str:
        return str(self.state_dir / "tls-cert.pem")

    def command(self) -> list[str]:
        launcher = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; "
        if self.switch_interval is not None:
            launcher += f"sys.setswitchinterval({self.switch_interval!r}); "
        if self.udp_rcvbuf is not None:
            launcher += _RCVBUF_PATCH.format(size=int(self.udp_rcvbuf))
        launcher += "run()"
        return [
            *self.wrapper,
            sys.executable,
            "-c",
            launcher,
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log_path),
            *self.twistd_options,
            "runtara-core",
            "--host",
            self.host,
            "--port",
            "0",
            "--http-port",
            "off",
            "--state-dir",
            str(self.state_dir),
            "--database",
            self.database_url,
            "--max-concurrent-instances",
            str(self.max_instances),
            *(["--workers", str(self.workers)] if self.workers > 1 else []),
        ]

    def start(self) -> ServerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith("RUNTARA_")}
        env["RUNTARA_DB_POOL_SIZE"] = str(self.pool_size)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"runtara-core exited at start:\n{self.log_tail()}")
            ready = _LISTENING if self.workers == 1 else _ALL_WORKERS_SERVING
            match = ready.search(self._log_text())
            if match:
                self.port = int(match.group(2))
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"runtara-core did not start listening:\n{self.log_tail()}")

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def count_log(self, pattern: str) -> int:
        return len(re.findall(pattern, self._log_text()))

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (twistd drains and closes the database), SIGKILL after ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    """A temporary directory for one run (state dir, SQLite files)."""
    path = Path(tempfile.mkdtemp(prefix="runtara-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# -- the machine ---------------------------------------------------------------------------


def machine_info(engine: str | None = None, pg_url: str | None = None) -> dict[str, Any]:
    import sqlite3

    import aioquic

    import twisted

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "twisted": twisted.__version__,
        "aioquic": getattr(aioquic, "__version__", "?"),
    }
    if engine == "postgresql":
        info.update(_postgres_info(pg_server_url(pg_url)))
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _postgres_info(url: str) -> dict[str, Any]:
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            values = {}
            for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method"):
                cursor.execute(f"SHOW {name}")
                values[f"postgresql_{name}"] = cursor.fetchone()[0]
            return values
    finally:
        connection.close()


# -- command line and output -------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client load processes (0: chosen from the instance count)",
    )
    parser.add_argument(
        "--pool-size", type=int, default=8, help="RUNTARA_DB_POOL_SIZE for the server"
    )
    parser.add_argument(
        "--pg-url",
        default=None,
        help="maintenance URL of the PostgreSQL server for scratch databases "
        f"(default: ${PG_URL_VARIABLES[0]}, ${PG_URL_VARIABLES[1]} or {DEFAULT_PG_URL})",
    )
    parser.add_argument(
        "--server-switch-interval",
        type=float,
        default=None,
        help="experiment: sys.setswitchinterval() in the server process (Python's default 0.005)",
    )
    parser.add_argument(
        "--server-udp-rcvbuf",
        type=int,
        default=None,
        help="experiment: SO_RCVBUF (bytes) of the server's UDP socket (default: the OS's)",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--quiet", action="store_true", help="print only the median row")
    return parser


def default_client_procs(instances: int, given: int) -> int:
    """Client processes: as asked, else 1 for one instance, 2 up to 64, 4 beyond."""
    if given > 0:
        return min(given, max(instances, 1))
    if instances <= 1:
        return 1
    return 2 if instances <= 64 else 4


Column = tuple[str, str, str]
"""(key, header, format spec) of one table column."""


def format_table(title: str, columns: Sequence[Column], rows: Sequence[tuple[str, dict]]) -> str:
    headers = ["run", *(header for _, header, _ in columns)]
    body = []
    for label, values in rows:
        cells = [label]
        for key, _, spec in columns:
            value = values.get(key)
            if value is None:
                cells.append("-")
            else:
                cells.append(format(round(value) if spec.endswith("d") else value, spec))
        body.append(cells)
    return text_table(title, headers, body)


def text_table(title: str, headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """``title``, then the headers and the rows in right-aligned columns."""
    widths = [max(len(row[i]) for row in [headers, *body]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))

    return "\n".join([title, line(headers), line(["-" * w for w in widths]), *map(line, body)])


def result_path(scenario: str, tag: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"{scenario}-{tag}-{stamp}.json"


def main_for(
    scenario: str,
    tag: str,
    args: argparse.Namespace,
    params: dict[str, Any],
    run_once: Callable[[argparse.Namespace, int], dict[str, Any]],
    columns: Sequence[Column],
) -> dict[str, Any]:
    """Run ``run_once`` ``args.runs`` times, print the table, write the JSON; return it."""
    runs = []
    for index in range(args.runs):
        runs.append(run_once(args, index))
        if not args.quiet:
            print(f"  run {index + 1}/{args.runs} done", file=sys.stderr, flush=True)
    summary = medians(runs)
    document = {
        "scenario": scenario,
        "engine": args.engine,
        "params": params,
        "command": [Path(sys.executable).name, "-m", f"bench.{scenario}", *sys.argv[1:]],
        "machine": machine_info(args.engine, args.pg_url),
        "runs": runs,
        "median": summary,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    title = f"{scenario} [{args.engine}] " + " ".join(f"{k}={v}" for k, v in params.items())
    rows = [] if args.quiet else [(str(i + 1), run) for i, run in enumerate(runs)]
    rows.append(("median", summary))
    print(format_table(title, columns, rows))
    path = args.output or result_path(scenario, f"{args.engine}-{tag}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", "utf-8")
    print(f"wrote {path}")
    return document
