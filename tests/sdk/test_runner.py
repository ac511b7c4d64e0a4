"""How a workflow run ends and what is reported: completed, failed, cancelled, paused;
on a real instance of a runtara-core in this process (``tests/sdk/live.py``)."""

from __future__ import annotations

import msgpack
import pytest
import pytest_twisted

from runtara.sdk import (
    EventType,
    InstanceClient,
    JsonSerializer,
    SignalType,
    Status,
    WorkflowCancelled,
    execute_workflow,
)
from runtara.sdk.errors import RegistrationRefused, ServerUnreachable

pytestmark = pytest.mark.e2e


async def execute(instance, fn, **options):
    return await execute_workflow(instance.client, instance.clock, fn, **options)


@pytest_twisted.ensureDeferred
async def test_the_return_value_is_reported_as_completed(live):
    instance = await live(heartbeat_interval=30.0)
    timers_while_running = []

    async def flow(workflow):
        timers_while_running.extend(instance.clock.getDelayedCalls())
        return {"total": await workflow.step("sum", lambda: 1 + 2)}

    outcome = await execute(instance, flow)
    assert outcome.status is Status.COMPLETED and outcome.exit_code == 0
    assert outcome.output == {"total": 3}
    assert await instance.events() == [(EventType.COMPLETED, msgpack.packb({"total": 3}))]
    assert await instance.status() is Status.COMPLETED
    assert len(timers_while_running) == 1, "the heartbeats run while the workflow does"
    assert instance.clock.getDelayedCalls() == [], "and are stopped at its end"


@pytest_twisted.ensureDeferred
async def test_the_output_uses_the_workflow_serializer(instance):
    await execute(instance, lambda workflow: [1, "a"], serializer=JsonSerializer())
    assert await instance.events() == [(EventType.COMPLETED, b'[1,"a"]')]


@pytest_twisted.ensureDeferred
async def test_an_exception_is_reported_as_failed_with_its_message(instance):
    def flow(workflow):
        raise ValueError("card declined")

    outcome = await execute(instance, flow)
    assert outcome.status is Status.FAILED and outcome.exit_code == 1
    assert outcome.error == "ValueError: card declined"
    assert await instance.events() == [(EventType.FAILED, b"ValueError: card declined")]
    assert await instance.status() is Status.FAILED


@pytest_twisted.ensureDeferred
async def test_an_output_that_cannot_be_serialized_fails_the_workflow(instance):
    outcome = await execute(instance, lambda workflow: object())
    assert outcome.status is Status.FAILED
    assert outcome.error.startswith("the output cannot be serialized")


@pytest_twisted.ensureDeferred
async def test_a_cancelled_workflow_reports_nothing_more(instance):
    await instance.send_signal(SignalType.CANCEL)

    async def flow(workflow):
        await workflow.step("a", lambda: 1)

    outcome = await execute(instance, flow)
    assert outcome.status is Status.CANCELLED and outcome.exit_code == 0
    assert await instance.events() == []
    assert await instance.status() is Status.CANCELLED


@pytest_twisted.ensureDeferred
async def test_a_cancel_swallowed_by_the_workflow_is_still_a_cancel(instance):
    await instance.send_signal(SignalType.CANCEL)

    async def flow(workflow):
        try:
            await workflow.step("a", lambda: 1)
        except WorkflowCancelled:
            return "ignored"

    assert (await execute(instance, flow)).status is Status.CANCELLED
    assert await instance.events() == []


@pytest_twisted.ensureDeferred
async def test_a_paused_workflow_ends_suspended(instance):
    await instance.send_signal(SignalType.PAUSE)

    async def flow(workflow):
        await workflow.step("a", lambda: 1)
        await workflow.step("b", lambda: 2)

    outcome = await execute(instance, flow)
    assert outcome.status is Status.SUSPENDED and outcome.exit_code == 0
    assert await instance.events() == [(EventType.SUSPENDED, b"")]
    assert await instance.stored("b") is None


class LostAnswerClient(InstanceClient):
    """Records the end, then loses the answer: the re-registration is refused."""

    async def instance_event(self, event_type, payload=b"", **fields):
        await super().instance_event(event_type, payload, **fields)
        ended = await self.get_instance_status()
        raise RegistrationRefused(self.instance_id, "already ended", ended.status)


@pytest_twisted.ensureDeferred
async def test_an_end_whose_answer_was_lost_counts_as_reported(live):
    instance = await live(client_class=LostAnswerClient)
    outcome = await execute(instance, lambda workflow: "done")
    assert outcome.status is Status.COMPLETED
    assert await instance.status() is Status.COMPLETED


class UnreachableClient(InstanceClient):
    async def checkpoint(self, checkpoint_id, state):
        raise ServerUnreachable(300.0, OSError("down"))


@pytest_twisted.ensureDeferred
async def test_a_lost_server_is_not_reported_as_a_failed_workflow(live):
    instance = await live(client_class=UnreachableClient)

    async def flow(workflow):
        await workflow.step("a", lambda: 1)

    with pytest.raises(ServerUnreachable):
        await execute(instance, flow)
    assert await instance.events() == []
    assert await instance.status() is Status.RUNNING
