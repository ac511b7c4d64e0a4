"""Many instances of one tenant over one QUIC connection, against a real server."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults

from runtara.sdk import RegistrationRefused, Status, TenantConnection
from tests.sdk.inprocess import LossyConnector, config_for, lose_once, persistence_of
from tests.sdk.support import eventually, unique

pytestmark = pytest.mark.e2e


async def tenant_connection(local_core, lose=None) -> tuple[TenantConnection, LossyConnector]:
    from twisted.internet import reactor

    config = config_for(local_core, "")
    connector = LossyConnector(reactor, config, lose)
    return await TenantConnection.open(reactor, config, connector), connector


async def approve_then_ship(wf):
    approval = await wf.wait_for_signal("approval")
    return await wf.step("ship", lambda: f"{wf.instance_id} shipped with {approval.decode()}")


async def all_waiting(local_core, instance_ids) -> bool:
    async def waiting(instance_id) -> bool:
        record = await persistence_of(local_core).get_instance_status(instance_id, "sdk-tests")
        return record is not None and record.status is Status.RUNNING

    return all([await waiting(instance_id) for instance_id in instance_ids])


@pytest_twisted.ensureDeferred
async def test_many_instances_share_one_connection_and_see_only_their_own_signals(local_core):
    connection, connector = await tenant_connection(local_core)
    instance_ids = [unique("shared") for _ in range(5)]
    try:
        running = [
            ensureDeferred(connection.run_workflow(approve_then_ship, instance_id))
            for instance_id in instance_ids
        ]
        await eventually(lambda: all_waiting(local_core, instance_ids), "every instance waiting")
        for instance_id in reversed(instance_ids):
            await persistence_of(local_core).send_custom_signal(
                instance_id, "approval", f"yes for {instance_id}".encode()
            )
        outcomes = await gatherResults(running)
    finally:
        await connection.close()

    assert [outcome.status for outcome in outcomes] == [Status.COMPLETED] * 5
    assert [outcome.output for outcome in outcomes] == [
        f"{instance_id} shipped with yes for {instance_id}" for instance_id in instance_ids
    ]
    assert connector.links == 1
    registrations = [fields for op, fields in connector.calls if op == "register_instance"]
    assert sorted(fields["instance_id"] for fields in registrations) == sorted(instance_ids)


@pytest_twisted.ensureDeferred
async def test_a_lost_shared_connection_is_replaced_and_every_instance_carries_on(local_core):
    connection, connector = await tenant_connection(local_core, lose_once("checkpoint"))
    instance_ids = [unique("shared") for _ in range(3)]

    async def three_steps(wf):
        return [await wf.step(name, lambda name=name: name) for name in ("a", "b", "c")]

    try:
        outcomes = await gatherResults(
            [
                ensureDeferred(connection.run_workflow(three_steps, instance_id))
                for instance_id in instance_ids
            ]
        )
    finally:
        await connection.close()

    assert [outcome.output for outcome in outcomes] == [["a", "b", "c"]] * 3
    assert connector.links == 2


@pytest_twisted.ensureDeferred
async def test_an_instance_that_cannot_run_is_refused_and_the_connection_stays(local_core):
    connection, connector = await tenant_connection(local_core)
    done = unique("done")
    try:
        finished = await connection.run_workflow(lambda wf: "finished", done)
        with pytest.raises(RegistrationRefused):
            await connection.run_workflow(lambda wf: "again", done)
        other = await connection.run_workflow(lambda wf: "other", unique("other"))
    finally:
        await connection.close()

    assert (finished.status, other.status) == (Status.COMPLETED, Status.COMPLETED)
    assert connector.links == 1
