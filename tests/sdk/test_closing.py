"""Closing costs nothing on the workflow's path: ``run_workflow`` returns the outcome
once its report was answered, while the connection's closing period runs behind it.

End to end against a real server process; the workflow runs in this test's reactor.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from runtara.sdk import SdkConfig, Status, run_workflow
from tests.sdk.support import TENANT, open_quic_clients, unique

pytestmark = pytest.mark.e2e


def pending_calls(reactor, before: set) -> list:
    """Delayed calls armed since ``before`` was taken and not yet run or cancelled."""
    return [call for call in reactor.getDelayedCalls() if call not in before and call.active()]


@pytest_twisted.ensureDeferred
async def test_the_outcome_comes_back_before_the_closing_period_and_nothing_is_left(server):
    from twisted.internet import reactor

    instance_id = unique("closing")
    config = SdkConfig(
        instance_id=instance_id,
        tenant_id=TENANT,
        server_port=server.port,
        ca_file=str(server.ca_file),
        heartbeat_interval=0.05,
    )

    async def ten_steps(workflow):
        for number in range(10):
            await workflow.step(f"step-{number}", lambda number=number: number)
        return "done"

    open_before = set(open_quic_clients(reactor))
    before = set(reactor.getDelayedCalls())
    outcome = await run_workflow(reactor, ten_steps, config)

    assert outcome.status is Status.COMPLETED and outcome.output == "done"
    [connection] = [client for client in open_quic_clients(reactor) if client not in open_before]
    assert not connection.terminated, "run_workflow waited for the closing period"
    assert pending_calls(reactor, before), "the closing period's timer runs in the background"

    termination = await connection.when_closed()

    assert termination.application and termination.error_code == 0
    assert set(open_quic_clients(reactor)) == open_before, "the UDP port is released"
    assert pending_calls(reactor, before) == []
    status = await server.status(instance_id)
    assert status.status is Status.COMPLETED


@pytest.mark.parametrize("script", ["scripted.py", "scripted_async.py"])
@pytest_twisted.ensureDeferred
async def test_a_program_that_exits_right_after_leaves_no_traceback(workflow_run, script):
    run = workflow_run([{"step": "only"}], script)
    run.start()

    assert await run.exited() == 0, run.logs()

    status = await run.server.wait_for_status(run.instance_id, "completed")
    assert status.output is not None
    log = run.logs()
    assert "Traceback" not in log and "Unhandled" not in log, log
