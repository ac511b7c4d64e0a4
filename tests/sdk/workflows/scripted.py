"""A test workflow on the blocking facade: follows ``WORKFLOW_PLAN`` (see plan.py)."""

from __future__ import annotations

import time

from plan import STEP_RETRY, Journal, load_plan, tuned_config

from runtara.sdk.blocking import BlockingWorkflow, workflow

journal = Journal()


def effect(action: dict) -> str:
    result = journal.effect(action)
    time.sleep(action.get("delay", 0))
    return result


@workflow(retry_policy=STEP_RETRY, signal_poll_interval=0.1)
def scripted(wf: BlockingWorkflow) -> dict:
    journal.write("started")
    output = {}
    for action in load_plan():
        if "step" in action:
            name = action["step"]
            output[name] = wf.step(name, effect, action)
            journal.write("done", name, output[name])
        elif "sleep" in action:
            name = action["sleep"]
            journal.write("sleeping", name)
            slept = wf.sleep(action["seconds"], name)
            journal.write("woke", name, slept.slept_ms, slept.wake_at_ms)
            output[name] = slept.wake_at_ms
        else:
            name = action["signal"]
            journal.write("waiting", name)
            output[name] = wf.wait_for_signal(name, action.get("timeout")).decode()
            journal.write("received", name, output[name])
    return output


if __name__ == "__main__":
    scripted.main(tuned_config())
