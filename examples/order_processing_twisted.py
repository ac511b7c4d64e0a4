"""The same order workflow for Twisted programs: ``async def`` steps, Deferred API.

Run it like order_processing.py (see examples/README.md); it uses
``run_workflow`` under ``task.react`` instead of the blocking facade.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import task

from runtara.sdk import (
    RegistrationRefused,
    ServerUnreachable,
    SignalTimeout,
    Workflow,
    run_workflow,
)
from runtara.sdk.blocking import EXIT_UNAVAILABLE, log_to_stderr

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
        print(f"cooling down for {COOL_DOWN_SECONDS:g} s (durable sleep)", flush=True)
        await wf.sleep(COOL_DOWN_SECONDS, "cool-down")
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


async def main(reactor) -> None:
    try:
        outcome = await run_workflow(reactor, order_workflow(reactor))
    except (RegistrationRefused, ServerUnreachable) as error:
        print(f"cannot run: {error}", file=sys.stderr)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    print(f"{outcome.instance_id}: {outcome.status.value} {outcome.output or outcome.error}")
    if outcome.exit_code:
        raise SystemExit(outcome.exit_code)


if __name__ == "__main__":
    log_to_stderr()
    task.react(main)
