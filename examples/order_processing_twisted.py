"""The same order workflow for Twisted programs: ``async def`` steps, Deferred API.

Run it like order_processing.py (see examples/README.md); it uses
``workflow_main`` (``run_workflow`` with the exit statuses of a program:
2 when it cannot run, 130 on Ctrl-C) under ``task.react`` instead of the
blocking facade.
"""

from __future__ import annotations

import os

from twisted.internet import task

from runtara.sdk import SignalTimeout, Workflow
from runtara.sdk.program import workflow_main

COOL_DOWN_SECONDS = float(os.environ.get("ORDER_COOL_DOWN_SECONDS", "20"))
APPROVAL_TIMEOUT_SECONDS = float(os.environ.get("ORDER_APPROVAL_TIMEOUT_SECONDS", "3600"))


async def call_service(reactor, what: str, result):
    """Stands in for a network call (treq, txpostgres, ...): takes 0.2 s."""
    print(what, flush=True)
    return await task.deferLater(reactor, 0.2, lambda: result)


def order_workflow(reactor):
    async def process_order(wf: Workflow) -> dict:
        order_id = wf.instance_id
        order = await wf.step(
            "validate",
            call_service,
            reactor,
            f"validating {order_id}",
            {"order_id": order_id, "sku": "TEA-42", "quantity": 2, "amount_cents": 1800},
        )
        await wf.step("reserve-stock", call_service, reactor, "reserving stock", "reserved")
        payment = await wf.step(
            "charge-card", call_service, reactor, "charging the card", f"payment-{order_id}"
        )
        # The wake-up time is decided once; a restarted run sleeps only what is left.
        wake_at = await wf.step("cool-down-until", lambda: reactor.seconds() + COOL_DOWN_SECONDS)
        left = max(0.0, wake_at - reactor.seconds())
        print(f"cooling down for {left:.0f} s (durable sleep)", flush=True)
        await wf.sleep(left, "cool-down")
        print("waiting for the 'approval' signal (approve or reject)", flush=True)
        try:
            decision = (
                await wf.wait_for_signal("approval", timeout=APPROVAL_TIMEOUT_SECONDS)
            ).decode()
        except SignalTimeout:
            decision = "reject: nobody approved in time"
        if decision.startswith("reject"):
            await wf.step("refund", call_service, reactor, f"refunding {payment}", "refunded")
            return {"order": order["order_id"], "result": "refunded"}
        await wf.step("ship", call_service, reactor, f"shipping {order_id}", "shipped")
        return {"order": order["order_id"], "result": "shipped", "approved_by": decision}

    return process_order


if __name__ == "__main__":
    task.react(lambda reactor: workflow_main(reactor, order_workflow(reactor)))
