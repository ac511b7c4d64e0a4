"""Exactly once through the SDK, against a real server, with answers lost on purpose."""

from __future__ import annotations

import pytest
import pytest_twisted

from runtara.sdk import InstanceClient, SignalType, Status, execute_workflow
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


async def lossy_client(core, lose=None, **overrides) -> tuple[InstanceClient, LossyConnector]:
    from twisted.internet import reactor

    config = config_for(core, unique("exactly"), **overrides)
    connector = LossyConnector(reactor, config, lose)
    client = InstanceClient(reactor, config, InstanceSession(reactor, config, connector))
    await client.session.open()
    return client, connector


@pytest_twisted.ensureDeferred
async def test_reconnecting_after_a_lost_answer_is_not_a_new_start(core):
    client, connector = await lossy_client(core, lose_once("checkpoint"))
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
    assert await started_events(core, client.instance_id) == 1


@pytest_twisted.ensureDeferred
async def test_a_pause_whose_acknowledgement_answer_is_lost_still_pauses(core):
    from twisted.internet import reactor

    client, connector = await lossy_client(core, lose_once("signal_ack"))
    await persistence_of(core).send_signal(client.instance_id, SignalType.PAUSE, b"")
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
    record = await persistence_of(core).get_instance_status(client.instance_id, TENANT)
    assert record.status is Status.SUSPENDED
