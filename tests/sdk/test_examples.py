"""The examples run as examples/README.md says, approvals sent with the ``runtara`` CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted

from tests.sdk.support import REPO, Process, child_env, poll_until, unique

pytestmark = pytest.mark.e2e


EXAMPLES = ["order_processing.py", "order_processing_twisted.py"]


def example(
    server, processes, tmp_path, script: str, instance_id: str, cool_down: str = "1"
) -> Process:
    env = server.workflow_env(
        instance_id,
        RUNTARA_HEARTBEAT_INTERVAL_MS="30000",
        ORDER_COOL_DOWN_SECONDS=cool_down,
        ORDER_PAYMENT_FAILURE_RATE="0",
    )
    process = Process(
        [sys.executable, str(REPO / "examples" / script)],
        env,
        tmp_path / f"{unique(instance_id)}.log",
    )
    processes.append(process)
    return process


async def runtara_cli(server, processes, tmp_path, *arguments: str) -> str:
    """``runtara ARGUMENTS...`` on the server's database; its stdout."""
    log = tmp_path / f"cli-{unique('cli')}.log"
    process = Process(
        [sys.executable, "-m", "runtara.cli", *arguments],
        child_env(RUNTARA_STATE_DIR=str(server.state_dir)),
        log,
    )
    processes.append(process)
    assert await process.exited() == 0, process.log()
    return process.log()


@pytest_twisted.ensureDeferred
async def test_order_processing_ships_once_approved(server, processes, tmp_path):
    order = unique("order")
    process = example(server, processes, tmp_path, "order_processing.py", order)
    await poll_until(lambda: "waiting for the 'approval' signal" in process.log(), "the wait")
    await runtara_cli(
        server, processes, tmp_path, "custom-signal", order, "approval", "--payload", "alice"
    )

    assert await process.exited() == 0, process.log()
    status = await server.wait_for_status(order, "completed")
    output = json.loads(status.output)
    assert output["result"] == "shipped" and output["approved_by"] == "alice"
    shown = await runtara_cli(server, processes, tmp_path, "--json", "instances", "show", order)
    assert "shipped" in shown
    received = await runtara_cli(
        server, processes, tmp_path, "checkpoints", "get", order, "approval#signal"
    )
    assert received == '{"payload":"alice"}'
    deadline = await runtara_cli(
        server, processes, tmp_path, "checkpoints", "get", order, "approval#deadline"
    )
    assert re.fullmatch(r'\{"deadline":"[0-9-]{10}T[0-9:]{8}Z","deadline_ms":[0-9]+\}', deadline)


@pytest_twisted.ensureDeferred
async def test_order_processing_resumes_after_ctrl_c(server, processes, tmp_path):
    order = unique("order")
    first = example(server, processes, tmp_path, "order_processing.py", order)
    await poll_until(lambda: "waiting for the 'approval' signal" in first.log(), "the wait")
    first.popen.send_signal(signal.SIGINT)
    assert await first.exited() == 130, first.log()

    second = example(server, processes, tmp_path, "order_processing.py", order)
    await poll_until(lambda: "waiting for the 'approval' signal" in second.log(), "the wait")
    await runtara_cli(
        server, processes, tmp_path, "custom-signal", order, "approval", "--payload", "bob"
    )
    assert await second.exited() == 0, second.log()
    assert "charging" not in second.log()
    assert "shipping" in second.log()


@pytest.mark.parametrize("script", EXAMPLES)
@pytest_twisted.ensureDeferred
async def test_ctrl_c_during_the_cool_down_exits_130_and_the_order_resumes(
    server, processes, tmp_path, script
):
    order = unique("order")
    first = example(server, processes, tmp_path, script, order, cool_down="4")
    await poll_until(lambda: "cooling down" in first.log(), "the cool-down")
    first.popen.send_signal(signal.SIGINT)

    assert await first.exited() == 130, first.log()
    assert "Traceback" not in first.log() and "Exception ignored" not in first.log()
    assert "interrupted: run the workflow again to resume it" in first.log()
    await server.wait_for_status(order, "suspended")

    second = example(server, processes, tmp_path, script, order, cool_down="4")
    await poll_until(lambda: "waiting for the 'approval' signal" in second.log(), "the wait")
    await runtara_cli(
        server, processes, tmp_path, "custom-signal", order, "approval", "--payload", "eve"
    )
    assert await second.exited() == 0, second.log()
    assert "charging" not in second.log()
    await server.wait_for_status(order, "completed")


@pytest.mark.parametrize("script", EXAMPLES)
@pytest_twisted.ensureDeferred
async def test_a_restarted_order_says_how_much_of_the_cool_down_is_left(
    server, processes, tmp_path, script
):
    order = unique("order")
    first = example(server, processes, tmp_path, script, order, cool_down="8")
    await poll_until(lambda: "cooling down for 8 s" in first.log(), "the cool-down")
    cooling_since = time.monotonic()
    await poll_until(lambda: time.monotonic() >= cooling_since + 3, "3 s of the cool-down")
    first.kill()

    second = example(server, processes, tmp_path, script, order, cool_down="8")
    said = await poll_until(
        lambda: re.search(r"cooling down for ([0-9]+) s", second.log()), "the cool-down"
    )
    assert int(said.group(1)) <= 5, second.log()
    assert "charging" not in second.log()


@pytest_twisted.ensureDeferred
async def test_the_twisted_example_refunds_a_rejected_order(server, processes, tmp_path):
    order = unique("order")
    process = example(server, processes, tmp_path, "order_processing_twisted.py", order)
    await poll_until(lambda: "waiting for the 'approval' signal" in process.log(), "the wait")
    await runtara_cli(
        server, processes, tmp_path, "custom-signal", order, "approval", "--payload", "reject"
    )

    assert await process.exited() == 0, process.log()
    await server.wait_for_status(order, "completed")
    assert "refunding" in process.log()


@pytest_twisted.ensureDeferred
async def test_a_cancel_sent_with_the_cli_cancels_the_order(server, processes, tmp_path):
    order = unique("order")
    process = example(server, processes, tmp_path, "order_processing.py", order)
    await poll_until(lambda: "waiting for the 'approval' signal" in process.log(), "the wait")
    await runtara_cli(server, processes, tmp_path, "signal", order, "cancel")

    assert await process.exited() == 0, process.log()
    await server.wait_for_status(order, "cancelled")


@pytest.mark.parametrize(
    ("script", "trust", "says"),
    [
        (
            "order_processing.py",
            {"RUNTARA_CA_FILE": ""},
            "is not trusted: no CA this system trusts vouches for its certificate"
            " (self-signed certificate); set RUNTARA_CA_FILE to the server's certificate",
        ),
        (
            "order_processing_twisted.py",
            {"RUNTARA_CA_FILE": "", "RUNTARA_SERVER_FINGERPRINT": "AB" * 32},
            "is not trusted: its certificate's SHA-256 fingerprint is ",
        ),
    ],
    ids=["no-ca-file", "wrong-fingerprint"],
)
def test_an_untrusted_server_stops_the_example_with_one_line_and_status_2(
    server, script, trust, says
):
    env = server.workflow_env(unique("order"), **trust)
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert f"workflow cannot run: runtara-core at {server.address} {says}" in line
    assert result.stdout == ""
