"""One round trip per step, counted through the real client against a real server."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

from runtara.sdk import (
    Backoff,
    InstanceClient,
    RetryPolicy,
    SessionClosed,
    Status,
    execute_workflow,
)
from runtara.sdk.connection import InstanceSession
from tests.sdk.inprocess import LossyConnector, config_for
from tests.sdk.support import unique

pytestmark = pytest.mark.e2e


async def counted_client(local_core, instance_id: str) -> tuple[InstanceClient, LossyConnector]:
    """A client whose every call (registration included) the connector records."""
    from twisted.internet import reactor

    config = config_for(local_core, instance_id)
    connector = LossyConnector(reactor, config)
    client = InstanceClient(reactor, config, InstanceSession(reactor, config, connector))
    await client.session.open()
    return client, connector


def steps(*names: str, stop_after: str | None = None, ran: list[str] | None = None):
    async def workflow(wf):
        for name in names:
            await wf.step(name, lambda name=name: ran.append(name) if ran is not None else None)
            if name == stop_after:
                await wf.client.session.close()
                raise SessionClosed("the workflow process died")
        return "done"

    return workflow


@pytest_twisted.ensureDeferred
async def test_a_fresh_instance_saves_each_step_with_one_call(local_core):
    from twisted.internet import reactor

    client, connector = await counted_client(local_core, unique("fresh"))
    try:
        outcome = await execute_workflow(client, reactor, steps("a", "b", "c"))
    finally:
        await client.close()

    assert outcome.status is Status.COMPLETED
    assert connector.operations() == [
        "register_instance",
        "checkpoint",
        "checkpoint",
        "checkpoint",
        "instance_event",
    ]


@pytest_twisted.ensureDeferred
async def test_a_resumed_instance_replays_a_step_with_one_call_and_saves_a_new_one_with_one(
    local_core,
):
    from twisted.internet import reactor

    instance_id = unique("resumed")
    first, _ = await counted_client(local_core, instance_id)
    ran: list[str] = []
    with pytest.raises(SessionClosed):
        # The process dies after saving "b".
        await execute_workflow(first, reactor, steps("a", "b", "c", stop_after="b", ran=ran))

    second, connector = await counted_client(local_core, instance_id)
    try:
        outcome = await execute_workflow(second, reactor, steps("a", "b", "c", ran=ran))
    finally:
        await second.close()

    assert outcome.status is Status.COMPLETED
    assert ran == ["a", "b", "c"]
    assert connector.operations() == [
        "register_instance",
        "get_checkpoint",
        "get_checkpoint",
        "checkpoint",
        "instance_event",
    ]


@pytest_twisted.ensureDeferred
async def test_a_steps_retry_limit_holds_across_a_restart(local_core):
    from twisted.internet import reactor

    instance_id = unique("retries")
    first, _ = await counted_client(local_core, instance_id)
    calls: list[int] = []

    def broken():
        calls.append(len(calls) + 1)
        if len(calls) == 2:
            # The process dies during this attempt: it is never recorded.
            ensureDeferred(first.session.close())
        raise RuntimeError(f"call {len(calls)} failed")

    async def workflow(wf):
        await wf.step("broken", broken)

    three_quick_attempts = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.0, maximum=0.0))
    with pytest.raises(SessionClosed):
        await execute_workflow(first, reactor, workflow, retry_policy=three_quick_attempts)
    second, _ = await counted_client(local_core, instance_id)
    try:
        outcome = await execute_workflow(
            second, reactor, workflow, retry_policy=three_quick_attempts
        )
    finally:
        await second.close()

    assert calls == [1, 2, 3, 4], "attempt 1, the crashed attempt 2 again, attempt 3"
    assert outcome.status is Status.FAILED
    assert outcome.error == "RuntimeError: call 4 failed"
