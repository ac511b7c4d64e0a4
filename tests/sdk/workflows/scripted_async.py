"""A test workflow on the Deferred API (``task.react``): follows ``WORKFLOW_PLAN``."""

from __future__ import annotations

import sys

from plan import STEP_RETRY, Journal, load_plan, tuned_config
from twisted.internet import task

from runtara.sdk import Workflow, run_workflow
from runtara.sdk.blocking import log_to_stderr

journal = Journal()


async def effect(reactor, action: dict) -> str:
    result = journal.effect(action)
    await task.deferLater(reactor, action.get("delay", 0))
    return result


async def scripted(reactor, wf: Workflow) -> dict:
    journal.write("started")
    output = {}
    for action in load_plan():
        if "step" in action:
            name = action["step"]
            output[name] = await wf.step(name, effect, reactor, action)
            journal.write("done", name, output[name])
        elif "sleep" in action:
            name = action["sleep"]
            journal.write("sleeping", name)
            slept = await wf.sleep(action["seconds"], name)
            journal.write("woke", name, slept.slept_ms, slept.wake_at_ms)
            output[name] = slept.wake_at_ms
        else:
            name = action["signal"]
            journal.write("waiting", name)
            output[name] = (await wf.wait_for_signal(name, action.get("timeout"))).decode()
            journal.write("received", name, output[name])
    return output


async def main(reactor) -> None:
    outcome = await run_workflow(
        reactor,
        lambda wf: scripted(reactor, wf),
        tuned_config(),
        retry_policy=STEP_RETRY,
        signal_poll_interval=0.1,
    )
    journal.write("outcome", outcome.status.value)
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


if __name__ == "__main__":
    log_to_stderr()
    task.react(main)
