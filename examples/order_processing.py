"""Order processing as a durable workflow, written as a plain (blocking) script.

validate -> reserve stock -> charge the card -> durable cool-down sleep ->
wait for a person's approval (a custom signal) -> ship or refund.

Every step runs once for the life of the order: kill this script (or the
server) at any point, start it again, and it carries on where it was,
without charging the card twice. Results are checkpointed as JSON, so
``runtara checkpoints get`` and ``runtara instances show`` print them as
text. See examples/README.md for the commands.
"""

from __future__ import annotations

import os
import random
import time

from runtara.sdk import Backoff, JsonSerializer, RetryPolicy, SignalTimeout
from runtara.sdk.blocking import BlockingWorkflow, workflow

COOL_DOWN_SECONDS = float(os.environ.get("ORDER_COOL_DOWN_SECONDS", "20"))
APPROVAL_TIMEOUT_SECONDS = float(os.environ.get("ORDER_APPROVAL_TIMEOUT_SECONDS", "3600"))
PAYMENT_FAILURE_RATE = float(os.environ.get("ORDER_PAYMENT_FAILURE_RATE", "0.3"))


# -- the side effects (a real shop would call its services here) ------------------


def validate(order_id: str) -> dict:
    print(f"validating {order_id}", flush=True)
    return {"order_id": order_id, "sku": "TEA-42", "quantity": 2, "amount_cents": 1800}


def reserve_stock(order: dict) -> str:
    print(f"reserving {order['quantity']} x {order['sku']}", flush=True)
    return f"reservation-{order['order_id']}"


def charge_card(order: dict) -> str:
    print(f"charging {order['amount_cents']} cents", flush=True)
    if random.random() < PAYMENT_FAILURE_RATE:
        raise ConnectionError("payment gateway timed out")
    return f"payment-{order['order_id']}"


def seconds_from_now(seconds: float) -> float:
    return time.time() + seconds


def ship(order: dict, approver: str) -> str:
    print(f"shipping {order['order_id']} (approved by {approver})", flush=True)
    return f"parcel-{order['order_id']}"


def refund(payment: str, reason: str) -> str:
    print(f"refunding {payment}: {reason}", flush=True)
    return f"refund-of-{payment}"


# -- the workflow -------------------------------------------------------------------

PAYMENT_RETRY = RetryPolicy(max_attempts=5, backoff=Backoff(initial=0.5, maximum=5.0))


@workflow(serializer=JsonSerializer())
def process_order(wf: BlockingWorkflow) -> dict:
    order = wf.step("validate", validate, wf.instance_id)
    reservation = wf.step("reserve-stock", reserve_stock, order)
    payment = wf.step("charge-card", charge_card, order, retry=PAYMENT_RETRY)

    # The wake-up time is decided once; a restarted run sleeps only what is left.
    wake_at = wf.step("cool-down-until", seconds_from_now, COOL_DOWN_SECONDS)
    left = max(0.0, wake_at - time.time())
    print(f"cooling down for {left:.0f} s (durable sleep)", flush=True)
    wf.sleep(left, "cool-down")

    print("waiting for the 'approval' signal (approve or reject)", flush=True)
    try:
        decision = wf.wait_for_signal("approval", timeout=APPROVAL_TIMEOUT_SECONDS).decode()
    except SignalTimeout:
        decision = "reject: nobody approved in time"

    if decision.startswith("reject"):
        refunded = wf.step("refund", refund, payment, decision)
        return {"order": order["order_id"], "result": "refunded", "refund": refunded}
    parcel = wf.step("ship", ship, order, decision)
    return {
        "order": order["order_id"],
        "result": "shipped",
        "reservation": reservation,
        "payment": payment,
        "parcel": parcel,
        "approved_by": decision,
    }


if __name__ == "__main__":
    process_order.main()
