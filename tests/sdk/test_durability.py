"""Durability end to end: real server and workflow processes, kill -9 and restarts."""

from __future__ import annotations

import time

import msgpack
import pytest
import pytest_twisted

from tests.sdk.support import eventually, poll_until

pytestmark = pytest.mark.e2e

SCRIPTS = ["scripted.py", "scripted_async.py"]
SERVER_RESTART_TIMEOUT = 30
"""How long a workflow may take to finish across a server restart."""


def steps(*names: str, delay: float = 0.0) -> list[dict]:
    return [{"step": name, "delay": delay} for name in names]


def output_of(status) -> dict:
    assert status.output is not None, status
    return msgpack.unpackb(status.output)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest_twisted.ensureDeferred
async def test_a_killed_workflow_does_not_run_finished_steps_again(server, workflow_run, script):
    run = workflow_run(steps("s1", "s2", "s3", "s4", delay=0.3), script)
    run.start()
    await run.reached("done", "s2")
    run.process.kill()
    finished_before_kill = {name for name in ("s1", "s2", "s3") if run.count("done", name)}

    run.start()
    assert await run.exited() == 0, run.logs()

    status = await server.wait_for_status(run.instance_id, "completed")
    assert output_of(status) == {f"s{n}": f"s{n}-result" for n in range(1, 5)}
    for name in finished_before_kill:
        assert run.count("effect", name) == 1, run.journal()
    assert run.count("effect", "s4") == 1
    assert run.count("started") == 2


@pytest_twisted.ensureDeferred
async def test_a_workflow_survives_a_server_killed_and_restarted(server, workflow_run):
    run = workflow_run(steps("s1", "s2", "s3", delay=0.5))
    run.start()
    await run.reached("effect", "s2")
    await server.restart()

    assert await run.exited(timeout=SERVER_RESTART_TIMEOUT) == 0, run.logs()
    status = await server.wait_for_status(run.instance_id, "completed")
    assert output_of(status) == {"s1": "s1-result", "s2": "s2-result", "s3": "s3-result"}
    for name in ("s1", "s2", "s3"):
        assert run.count("effect", name) == 1, run.journal()
    assert run.count("started") == 1
    assert "lost" in run.logs() and "connection 2" in run.logs()


@pytest_twisted.ensureDeferred
async def test_cancel_ends_the_workflow_cancelled(server, workflow_run):
    run = workflow_run([*steps("s1"), {"signal": "never"}, *steps("after")])
    run.start()
    await run.reached("waiting", "never")
    await server.send_signal(run.instance_id, "cancel", b"operator said so")

    assert await run.exited() == 0, run.logs()
    status = await server.wait_for_status(run.instance_id, "cancelled")
    assert status.finished_at_ms
    assert run.count("effect", "after") == 0


@pytest_twisted.ensureDeferred
async def test_pause_suspends_and_a_new_run_resumes(server, workflow_run):
    run = workflow_run([*steps("s1"), {"signal": "go"}, *steps("s2")])
    run.start()
    await run.reached("waiting", "go")
    await server.send_signal(run.instance_id, "pause")

    assert await run.exited() == 0, run.logs()
    await server.wait_for_status(run.instance_id, "suspended")
    await server.send_signal(run.instance_id, "resume")

    run.start()
    await run.reached("waiting", "go", times=2)
    await server.wait_for_status(run.instance_id, "running")
    await server.send_custom_signal(run.instance_id, "go", b"green light")
    assert await run.exited() == 0, run.logs()

    status = await server.wait_for_status(run.instance_id, "completed")
    assert output_of(status) == {"s1": "s1-result", "go": "green light", "s2": "s2-result"}
    assert run.count("effect", "s1") == 1
    assert run.count("effect", "s2") == 1


@pytest.mark.parametrize("script", SCRIPTS)
@pytest_twisted.ensureDeferred
async def test_a_signal_sent_before_the_wait_is_received(server, workflow_run, script):
    run = workflow_run([*steps("slow", delay=1.0), {"signal": "approval"}], script)
    run.start()
    await run.reached("effect", "slow")
    await server.send_custom_signal(run.instance_id, "approval", b"approved by ops")

    assert await run.exited() == 0, run.logs()
    status = await server.wait_for_status(run.instance_id, "completed")
    assert output_of(status)["approval"] == "approved by ops"


@pytest_twisted.ensureDeferred
async def test_a_received_signal_is_replayed_after_a_crash(server, workflow_run):
    run = workflow_run([{"signal": "approval"}, *steps("after", delay=3.0)])
    run.start()
    await run.reached("waiting", "approval")
    await server.send_custom_signal(run.instance_id, "approval", b"yes")
    await run.reached("effect", "after")
    run.process.kill()

    run.start()
    assert await run.exited() == 0, run.logs()
    status = await server.wait_for_status(run.instance_id, "completed")
    assert output_of(status)["approval"] == "yes"
    assert run.count("received", "approval") == 2


@pytest.mark.parametrize("restart", ["workflow", "server"])
@pytest_twisted.ensureDeferred
async def test_a_sleep_interrupted_by_a_restart_wakes_at_the_original_time(
    server, workflow_run, restart
):
    run = workflow_run([*steps("before"), {"sleep": "nap", "seconds": 4}, *steps("after")])
    run.start()
    await run.reached("sleeping", "nap")
    sleeping = await server.wait_for_status(run.instance_id, "suspended")
    wake_at_ms = sleeping.sleep_until_ms
    assert wake_at_ms is not None

    if restart == "workflow":
        run.process.kill()
        run.start()
    else:
        await server.restart()
    assert await run.exited(timeout=SERVER_RESTART_TIMEOUT) == 0, run.logs()

    woke = [line.split() for line in run.journal() if line.startswith("woke nap")]
    assert len(woke) == 1, run.journal()
    _, _, slept_ms, reported_wake_at_ms = woke[0]
    assert int(reported_wake_at_ms) == wake_at_ms
    assert int(slept_ms) < 4000
    status = await server.wait_for_status(run.instance_id, "completed")
    assert status.finished_at_ms >= wake_at_ms
    assert output_of(status)["nap"] == wake_at_ms
    assert run.count("effect", "before") == 1
    assert run.count("effect", "after") == 1


@pytest_twisted.ensureDeferred
async def test_a_sleep_through_a_server_kill_wakes_on_time_with_the_sdk_defaults(
    server, workflow_run
):
    """Nothing tuned: the SDK's own keep-alive, idle timeout and backoff, heartbeats
    every 30 s. The server is killed with -9 and restarted on the same port and state
    directory; it resets the old connection when the held sleep call probes it, and
    the workflow registers again at once and wakes at its deadline."""
    run = workflow_run([{"sleep": "nap", "seconds": 10}, *steps("after")])
    run.start(WORKFLOW_SDK_DEFAULTS="1", RUNTARA_HEARTBEAT_INTERVAL_MS="30000")
    await run.reached("sleeping", "nap")
    wake_at_ms = (await server.wait_for_status(run.instance_id, "suspended")).sleep_until_ms
    await server.restart()
    back_at_ms = time.time() * 1000
    assert back_at_ms < wake_at_ms - 2000, "the restart took too long for this test"

    assert await run.exited(timeout=20) == 0, run.logs()
    status = await server.wait_for_status(run.instance_id, "completed")
    assert wake_at_ms <= status.finished_at_ms <= wake_at_ms + 1500, run.logs()
    registered_again = (await server.events(run.instance_id, "started"))[0]
    assert registered_again.created_at_ms - back_at_ms <= 1500, "noticed about a second after"
    assert "stateless reset" in run.logs()
    assert run.count("woke", "nap") == 1


@pytest_twisted.ensureDeferred
async def test_a_finished_sleep_is_not_slept_again_on_replay(server, workflow_run):
    run = workflow_run([{"sleep": "nap", "seconds": 1}, *steps("after", delay=5.0)])
    run.start()
    await run.reached("effect", "after")
    run.process.kill()

    run.start()
    await run.reached("woke", "nap", times=2)
    replayed = [line.split() for line in run.journal() if line.startswith("woke nap")][1]
    assert replayed[2] == "0"
    assert await run.exited() == 0, run.logs()


@pytest_twisted.ensureDeferred
async def test_a_signal_deadline_survives_a_restart(server, workflow_run):
    run = workflow_run([{"signal": "approval", "timeout": 6}])
    run.start()
    await run.reached("waiting", "approval")
    waiting_since = time.time()
    deadline_ms = msgpack.unpackb(
        await eventually(
            lambda: server.checkpoint(run.instance_id, "approval#deadline"), "the deadline"
        )
    )
    assert 0 <= deadline_ms - waiting_since * 1000 <= 6500
    await poll_until(lambda: time.time() >= waiting_since + 3, "3 s into the wait")
    run.process.kill()
    run.start()

    assert await run.exited() == 1, run.logs()
    status = await server.wait_for_status(run.instance_id, "failed")
    assert status.error.startswith("SignalTimeout: no signal 'approval' arrived"), status
    assert deadline_ms <= status.finished_at_ms < deadline_ms + 1500


@pytest_twisted.ensureDeferred
async def test_a_failing_step_is_retried_then_fails_the_workflow(server, workflow_run):
    run = workflow_run([{"step": "flaky", "fail_times": 1}, {"step": "broken", "fail_times": 9}])
    run.start()

    assert await run.exited() == 1, run.logs()
    status = await server.wait_for_status(run.instance_id, "failed")
    assert status.error == "RuntimeError: broken failed on attempt 3"
    assert run.count("effect", "flaky") == 2
    assert run.count("effect", "broken") == 3


@pytest_twisted.ensureDeferred
async def test_a_finished_instance_does_not_run_again(server, workflow_run):
    run = workflow_run(steps("only"))
    run.start()
    assert await run.exited() == 0, run.logs()

    run.start()
    assert await run.exited() == 2, run.logs()
    assert "already completed" in run.process.log()
    assert run.count("effect", "only") == 1
