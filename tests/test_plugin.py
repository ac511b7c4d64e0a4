"""The ``runtara-core`` twistd plugin and ``runtara.tac``, run as operators run them.

Each test starts a real twistd in a subprocess with the checkout on
``PYTHONPATH`` and a scratch directory as its current directory and home.
``python -m twisted`` is ``twist``, which has no ``-n`` or ``--pidfile``;
twistd has no ``__main__``, so it is started through its entry point.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import runtara
from runtara.config import SETTINGS

REPO = Path(__file__).resolve().parents[1]
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]
TWIST = [sys.executable, "-m", "twisted"]
RUN_TIMEOUT = 60.0
"""Seconds a command may take before the test fails (they take about one)."""

LISTENING = re.compile(r"listening on QUIC (\S+):([0-9]+) ", re.IGNORECASE)
CRITICAL = "#critical]"
"""How twistd's log format marks a critical event (such as a failed start)."""
FINGERPRINT = re.compile(r"fingerprint\W+((?:[0-9A-F]{2}:){31}[0-9A-F]{2})\b", re.IGNORECASE)


def environment(home: Path, **variables: str) -> dict[str, str]:
    """This process's environment without runtara's variables, plus ``variables``
    (the management HTTP server on any free port unless they say otherwise)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RUNTARA_") and name != "XDG_STATE_HOME"
    }
    env.update(PYTHONPATH=str(REPO), HOME=str(home), RUNTARA_HTTP_PORT="0")
    env.update(variables)
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )


# --help


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    result = run([*TWISTD, "--help"], tmp_path, environment(tmp_path))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s*runtara-core\s", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize("runner", [TWISTD, TWIST], ids=["twistd", "twist"])
def test_help_lists_every_option(tmp_path: Path, runner: list[str]) -> None:
    result = run([*runner, "runtara-core", "--help"], tmp_path, environment(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    for setting in SETTINGS:
        shown = f"--{setting.option} " if setting.flag else f"--{setting.option}="
        assert shown in result.stdout
        assert setting.variable in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("runner", [TWISTD, TWIST], ids=["twistd", "twist"])
def test_version_is_runtaras(tmp_path: Path, runner: list[str]) -> None:
    result = run([*runner, "runtara-core", "--version"], tmp_path, environment(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"runtara-core {runtara.__version__} (Twisted "), result.stdout


# Bad values stop twistd before anything starts


@pytest.mark.parametrize(
    ("arguments", "variables", "message"),
    [
        ([], {"RUNTARA_QUIC_PORT": "99999"}, "RUNTARA_QUIC_PORT: must be an integer from 0 to"),
        (["--port=99999"], {}, "--port: must be an integer from 0 to 65535, got '99999'"),
        (
            [],
            {"RUNTARA_HTTP_HOST": "0.0.0.0"},
            "RUNTARA_HTTP_HOST: 0.0.0.0 is not a loopback address: the management HTTP server"
            " needs RUNTARA_ADMIN_TOKEN to listen there",
        ),
        (
            [],
            {"RUNTARA_MAX_CONCURRENT_INSTANCES": "-1"},
            "RUNTARA_MAX_CONCURRENT_INSTANCES: must be an integer >= 1, got '-1'",
        ),
        (
            ["--max-concurrent-instances=-1"],
            {},
            "--max-concurrent-instances: must be an integer >= 1, got '-1'",
        ),
        (
            [],
            {"RUNTARA_DATABASE_URL": "mysql://root:s3cret@localhost/runtara"},
            "RUNTARA_DATABASE_URL: unsupported database URL scheme 'mysql'",
        ),
        (
            ["--database=mysql://root:s3cret@localhost/runtara"],
            {},
            "--database: unsupported database URL scheme 'mysql'",
        ),
    ],
    ids=[
        "port-env",
        "port-option",
        "http-host-without-token",
        "instances-env",
        "instances-option",
        "db-env",
        "db-option",
    ],
)
def test_bad_value_is_one_line_and_nothing_starts(
    tmp_path: Path, arguments: list[str], variables: dict[str, str], message: str
) -> None:
    state = tmp_path / "state"
    env = environment(tmp_path, RUNTARA_STATE_DIR=str(state), **variables)
    started = time.monotonic()
    result = run([*TWISTD, "-n", "--pidfile=", "runtara-core", *arguments], tmp_path, env)
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"runtara-core: {message}"), result.stderr
    assert result.stdout == "", "no usage text above the line that matters"
    assert "s3cret" not in line
    assert not state.exists()


def test_tac_with_a_bad_value_is_one_line(tmp_path: Path) -> None:
    env = environment(tmp_path, RUNTARA_QUIC_PORT="99999", RUNTARA_STATE_DIR=str(tmp_path / "s"))
    result = run([*TWISTD, "-ny", str(REPO / "runtara.tac"), "--pidfile="], tmp_path, env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "runtara.tac: RUNTARA_QUIC_PORT: must be an integer from 0 to 65535, got '99999'"
    )
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "s").exists()


# A real server


@dataclass(frozen=True)
class Started:
    host: str
    port: int
    fingerprint: str
    log: str


def wait_for_log(
    process: subprocess.Popen[bytes], log: Path, ready: Callable[[str], bool], timeout: float
) -> str:
    """Poll the log until ``ready(text)``; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if ready(text):
            return text
        if process.poll() is not None or CRITICAL in text:
            pytest.fail(f"twistd failed to start (exit status {process.poll()}):\n{text}")
        if time.monotonic() > deadline:
            pytest.fail(f"twistd not ready after {timeout} s:\n{text}")
        time.sleep(0.05)


def serve_once(tmp_path: Path, name: str, arguments: list[str], env: dict[str, str]) -> Started:
    """Start twistd, wait until it serves, stop it with SIGTERM and check it stopped cleanly."""
    log = tmp_path / f"{name}.log"
    database = str(tmp_path / "state" / "runtara.db")

    def ready(text: str) -> bool:
        return bool(LISTENING.search(text) and FINGERPRINT.search(text)) and database in text

    with log.open("wb") as output:
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", *arguments],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        text = wait_for_log(process, log, ready, timeout=RUN_TIMEOUT)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text(errors="replace")
    # twistd re-raises the signal that stopped it, so a clean stop is "killed by SIGTERM".
    assert returncode == -signal.SIGTERM, text
    assert "Server Shut Down." in text
    assert "Traceback" not in text and "Unhandled" not in text, text
    listening, fingerprint = LISTENING.search(text), FINGERPRINT.search(text)
    assert listening is not None and fingerprint is not None
    return Started(listening.group(1), int(listening.group(2)), fingerprint.group(1).upper(), text)


@pytest.mark.e2e
def test_server_starts_logs_its_identity_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = serve_once(
        tmp_path,
        "first",
        ["runtara-core", "--host=127.0.0.1", "--port=0", f"--state-dir={state}"],
        environment(tmp_path),
    )
    second = serve_once(
        tmp_path,
        "second",
        ["runtara-core"],
        environment(
            tmp_path,
            RUNTARA_QUIC_HOST="127.0.0.1",
            RUNTARA_QUIC_PORT="0",
            RUNTARA_STATE_DIR=str(state),
        ),
    )
    assert first.port != 0 and second.port != 0
    assert first.host == second.host == "127.0.0.1"
    assert second.fingerprint == first.fingerprint
    assert (state / "runtara.db").is_file()


@pytest.mark.e2e
def test_the_tac_file_starts_the_same_service(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = environment(
        tmp_path,
        RUNTARA_QUIC_HOST="127.0.0.1",
        RUNTARA_QUIC_PORT="0",
        RUNTARA_STATE_DIR=str(state),
    )
    plugin = serve_once(tmp_path, "plugin", ["runtara-core"], env)
    tac = serve_once(tmp_path, "tac", ["-y", str(REPO / "runtara.tac")], env)
    assert tac.fingerprint == plugin.fingerprint
    assert "database schema version" in tac.log


@pytest.mark.e2e
def test_a_server_that_cannot_start_exits_with_status_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        arguments = ["runtara-core", "--host=127.0.0.1", f"--port={port}"]
        result = run(
            [*TWISTD, "-n", "--pidfile=", *arguments],
            tmp_path,
            environment(tmp_path, RUNTARA_STATE_DIR=str(tmp_path / "state")),
        )
    assert result.returncode == 1, result.stdout + result.stderr
    critical = [line for line in result.stdout.splitlines() if CRITICAL in line]
    assert len(critical) == 1
    assert "could not start" in critical[0] and str(port) in critical[0]


@pytest.mark.parametrize(
    ("state_dir", "reason"),
    [
        (lambda tmp: tmp / "a-file", "it is not a directory"),
        (lambda tmp: tmp / "a-file" / "below", "it is not a directory"),
        (lambda tmp: Path("/proc/runtara-nope"), "No such file or directory"),
    ],
    ids=["a-file", "below-a-file", "cannot-be-created"],
)
def test_an_unusable_state_directory_is_one_critical_line(
    tmp_path: Path, state_dir: Callable[[Path], Path], reason: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    state = state_dir(tmp_path)
    result = run(
        [*TWISTD, "-n", "--pidfile=", "runtara-core", "--port=0"],
        tmp_path,
        environment(tmp_path, RUNTARA_STATE_DIR=str(state)),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "#error]" not in output
    [critical] = [line for line in output.splitlines() if CRITICAL in line]
    assert critical.endswith(
        f"runtara-core could not start: cannot use {state} as the state directory"
        f" (RUNTARA_STATE_DIR, --state-dir): {reason}"
    ), critical


@pytest.mark.postgres
def test_a_postgresql_database_that_does_not_exist_is_one_critical_line(tmp_path: Path) -> None:
    from tests.pg import require_server

    missing = urlsplit(require_server())._replace(path="/runtara_no_such_database").geturl()
    result = run(
        [*TWISTD, "-n", "--pidfile=", "runtara-core", "--port=0"],
        tmp_path,
        environment(tmp_path, RUNTARA_DATABASE_URL=missing, RUNTARA_STATE_DIR=str(tmp_path)),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "#warn]" not in output and "reconnecting" not in output, output
    [critical] = [line for line in output.splitlines() if CRITICAL in line]
    assert "database 'runtara_no_such_database'" in critical
    assert critical.endswith("database or role does not exist"), critical


@pytest.mark.e2e
def test_a_failed_start_removes_the_pid_file(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run(
            [*TWISTD, "-n", "runtara-core", "--host=127.0.0.1", f"--port={port}"],
            tmp_path,
            environment(tmp_path, RUNTARA_STATE_DIR=str(tmp_path / "state")),
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert not (tmp_path / "twistd.pid").exists()


@pytest.fixture
def daemons(tmp_path: Path) -> Any:
    """Where daemonized twistd processes keep their pid file; any still running is killed."""
    pidfile = tmp_path / "twistd.pid"
    yield pidfile
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def daemon(tmp_path: Path, pidfile: Path, port: int) -> subprocess.CompletedProcess[str]:
    """``twistd runtara-core`` without ``-n``: returns once the daemon reported its start."""
    return run(
        [
            *TWISTD,
            f"--pidfile={pidfile}",
            f"--logfile={tmp_path / 'twistd.log'}",
            "runtara-core",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        tmp_path,
        environment(tmp_path, RUNTARA_STATE_DIR=str(tmp_path / "state")),
    )


@pytest.mark.e2e
def test_a_daemon_that_cannot_start_says_why_and_exits_1(tmp_path: Path, daemons: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = daemon(tmp_path, daemons, port)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"Couldn't listen on 127.0.0.1:{port}" in result.stderr
    assert not daemons.exists(), "no stale pid file"
    log = (tmp_path / "twistd.log").read_text()
    [critical] = [line for line in log.splitlines() if CRITICAL in line]
    assert f"could not start: Couldn't listen on 127.0.0.1:{port}" in critical


@pytest.mark.e2e
def test_a_daemon_reports_success_once_it_listens(tmp_path: Path, daemons: Path) -> None:
    result = daemon(tmp_path, daemons, 0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert LISTENING.search((tmp_path / "twistd.log").read_text()), "it returned before listening"
    os.kill(int(daemons.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + RUN_TIMEOUT
    while daemons.exists():
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)
    assert "Server Shut Down." in (tmp_path / "twistd.log").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["plugin", "tac"])
def test_json_logs_are_one_object_per_line(tmp_path: Path, how: str) -> None:
    env = environment(
        tmp_path,
        RUNTARA_QUIC_HOST="127.0.0.1",
        RUNTARA_QUIC_PORT="0",
        RUNTARA_STATE_DIR=str(tmp_path / "state"),
        RUNTARA_LOG_FORMAT="json",
    )
    arguments = ["runtara-core"] if how == "plugin" else ["-y", str(REPO / "runtara.tac")]
    started = serve_once(tmp_path, how, arguments, env)

    records = [json.loads(line) for line in started.log.splitlines()]
    assert all({"time", "level", "namespace", "message"} <= set(record) for record in records)
    (listening,) = [record for record in records if "listening on QUIC" in record["message"]]
    assert listening["level"] == "info"
    assert listening["port"] == started.port
    assert listening["namespace"] == "runtara.service.ListenerService"
    (http,) = [record for record in records if "management HTTP server" in record["message"]]
    assert http["url"].startswith("http://127.0.0.1:")


def test_json_logs_refuse_a_daemon_and_a_log_file(tmp_path: Path) -> None:
    env = environment(tmp_path, RUNTARA_LOG_FORMAT="json", RUNTARA_STATE_DIR=str(tmp_path / "s"))
    daemon = run([*TWISTD, "--pidfile=", "runtara-core"], tmp_path, env)
    log_file = run([*TWISTD, "-n", "--logfile=x.log", "runtara-core"], tmp_path, env)

    assert daemon.returncode != 0 and "run twistd with -n" in daemon.stdout + daemon.stderr
    assert log_file.returncode != 0 and "drop --logfile" in log_file.stdout + log_file.stderr
    assert not (tmp_path / "s").exists()


# Safe by default: loopback only without tenant tokens

UNAUTHENTICATED_WARNING = "without tenant tokens (--allow-unauthenticated)"
"""What the warning logged at each unauthenticated start on a reachable host says."""


@pytest.mark.e2e
def test_without_tokens_the_server_listens_on_loopback_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = serve_once(
        tmp_path,
        "loopback",
        ["runtara-core", "--port=0", f"--state-dir={state}"],
        environment(tmp_path),
    )
    assert started.host == "127.0.0.1"
    assert UNAUTHENTICATED_WARNING not in started.log


@pytest.mark.e2e
def test_with_tokens_the_server_listens_on_every_interface(tmp_path: Path) -> None:
    env = environment(
        tmp_path,
        RUNTARA_AUTH_TOKENS="tenant-a=secret",
        RUNTARA_QUIC_PORT="0",
        RUNTARA_STATE_DIR=str(tmp_path / "state"),
    )
    started = serve_once(tmp_path, "tokens", ["runtara-core"], env)
    assert started.host == "0.0.0.0"
    assert UNAUTHENTICATED_WARNING not in started.log


@pytest.mark.parametrize(
    ("arguments", "variables", "name"),
    [
        (["--host=0.0.0.0"], {}, "--host"),
        ([], {"RUNTARA_QUIC_HOST": "0.0.0.0"}, "RUNTARA_QUIC_HOST"),
    ],
    ids=["option", "variable"],
)
def test_a_reachable_host_without_tokens_is_refused_at_start(
    tmp_path: Path, arguments: list[str], variables: dict[str, str], name: str
) -> None:
    state = tmp_path / "state"
    env = environment(tmp_path, RUNTARA_STATE_DIR=str(state), RUNTARA_QUIC_PORT="0", **variables)
    result = run([*TWISTD, "-n", "--pidfile=", "runtara-core", *arguments], tmp_path, env)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"runtara-core: {name}: 0.0.0.0 is not a loopback address"), line
    assert "--allow-unauthenticated" in line
    assert result.stdout == ""
    assert not state.exists()


@pytest.mark.e2e
def test_allowing_unauthenticated_access_warns_at_every_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    arguments = ["runtara-core", "--host=0.0.0.0", "--port=0", f"--state-dir={state}"]
    plugin = serve_once(
        tmp_path, "allowed", [*arguments, "--allow-unauthenticated"], environment(tmp_path)
    )
    env = environment(
        tmp_path,
        RUNTARA_QUIC_HOST="0.0.0.0",
        RUNTARA_QUIC_PORT="0",
        RUNTARA_STATE_DIR=str(state),
        RUNTARA_ALLOW_UNAUTHENTICATED="true",
    )
    tac = serve_once(tmp_path, "allowed-tac", ["-y", str(REPO / "runtara.tac")], env)
    for started in (plugin, tac):
        assert started.host == "0.0.0.0"
        [warning] = [line for line in started.log.splitlines() if UNAUTHENTICATED_WARNING in line]
        assert "#warn]" in warning
