"""Exactly once through the SDK, against a real server, with answers lost on purpose."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

from runtara.sdk import (
    InstanceClient,
    SessionClosed,
    SignalType,
    Status,
    Workflow,
    execute_workflow,
)
from runtara.sdk.connection import InstanceSession
from tests.sdk.inprocess import (
    TENANT,
    LossyConnector,
    config_for,
    lose_once,
    persistence_of,
    started_events,
)
from tests.sdk.support import unique

pytestmark = pytest.mark.e2e


async def lossy_client(
    local_core, lose=None, instance_id=None, **overrides
) -> tuple[InstanceClient, LossyConnector]:
    from twisted.internet import reactor

    config = config_for(local_core, instance_id or unique("exactly"), **overrides)
    connector = LossyConnector(reactor, config, lose)
    client = InstanceClient(reactor, config, InstanceSession(reactor, config, connector))
    await client.session.open()
    return client, connector


@pytest_twisted.ensureDeferred
async def test_reconnecting_after_a_lost_answer_is_not_a_new_start(local_core):
    client, connector = await lossy_client(local_core, lose_once("checkpoint"))
    try:
        saved = await client.checkpoint("step-1", b"state")
    finally:
        await client.close()

    assert saved.found and saved.state == b"state"
    assert connector.operations() == [
        "register_instance",
        "checkpoint",
        "register_instance",
        "checkpoint",
    ]
    assert await started_events(local_core, client.instance_id) == 1


@pytest_twisted.ensureDeferred
async def test_a_pause_whose_acknowledgement_answer_is_lost_still_pauses(local_core):
    from twisted.internet import reactor

    client, connector = await lossy_client(local_core, lose_once("signal_ack"))
    await persistence_of(local_core).send_signal(client.instance_id, SignalType.PAUSE, b"")
    ran = []

    async def workflow(wf):
        await wf.step("first", lambda: ran.append("first"))
        await wf.step("second", lambda: ran.append("second"))

    try:
        outcome = await execute_workflow(client, reactor, workflow)
    finally:
        await client.close()

    assert outcome.status is Status.SUSPENDED
    assert ran == ["first"]
    assert connector.operations().count("signal_ack") == 2
    record = await persistence_of(local_core).get_instance_status(client.instance_id, TENANT)
    assert record.status is Status.SUSPENDED


def carries_a_custom_signal(fields, answer) -> bool:
    return "custom_signal" in answer


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_whose_poll_answer_is_lost_is_still_received(local_core):
    from twisted.internet import reactor

    client, connector = await lossy_client(
        local_core, lose_once("poll_signals", carries_a_custom_signal)
    )
    await persistence_of(local_core).send_custom_signal(client.instance_id, "approval", b"yes")
    workflow = Workflow(client, reactor, signal_poll_interval=0.05)
    try:
        payload = await workflow.wait_for_signal("approval", timeout=3)
    finally:
        await client.close()

    assert payload == b"yes"
    assert connector.links == 2


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_polled_by_a_run_that_dies_is_received_by_the_next_run(local_core):
    from twisted.internet import reactor

    dying, connector = await lossy_client(local_core)
    instance_id = dying.instance_id

    def die_with_the_answer(fields, answer) -> bool:
        if "custom_signal" not in answer:
            return False
        reactor.callLater(0, lambda: ensureDeferred(dying.session.close()))
        return True

    connector.lose = lose_once("poll_signals", die_with_the_answer)
    await persistence_of(local_core).send_custom_signal(instance_id, "approval", b"yes")
    with pytest.raises(SessionClosed):
        await Workflow(dying, reactor, signal_poll_interval=0.05).wait_for_signal("approval")

    next_run, _ = await lossy_client(local_core, instance_id=instance_id)
    try:
        payload = await Workflow(next_run, reactor, signal_poll_interval=0.05).wait_for_signal(
            "approval", timeout=3
        )
    finally:
        await next_run.close()
    assert payload == b"yes"


@pytest_twisted.ensureDeferred
async def test_a_cancel_whose_acknowledgement_answer_is_lost_cancels_once(local_core):
    from twisted.internet import reactor

    client, connector = await lossy_client(local_core, lose_once("signal_ack"))
    await persistence_of(local_core).send_signal(client.instance_id, SignalType.CANCEL, b"")
    ran = []

    async def workflow(wf):
        await wf.step("first", lambda: ran.append("first"))
        await wf.step("second", lambda: ran.append("second"))

    try:
        outcome = await execute_workflow(client, reactor, workflow)
    finally:
        await client.close()

    assert outcome.status is Status.CANCELLED
    assert ran == ["first"]
    record = await persistence_of(local_core).get_instance_status(client.instance_id, TENANT)
    assert record.status is Status.CANCELLED
