"""How a workflow run ends and what is reported: completed, failed, cancelled, paused."""

from __future__ import annotations

import msgpack
import pytest
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from runtara.sdk import (
    EventType,
    JsonSerializer,
    SignalType,
    Status,
    WorkflowCancelled,
    execute_workflow,
)
from runtara.sdk.errors import RegistrationRefused, ServerUnreachable
from tests.sdk.fakes import FakeClient, fired


def execute(client, fn, **options):
    return fired(ensureDeferred(execute_workflow(client, client.clock, fn, **options)))


def test_the_return_value_is_reported_as_completed():
    client = FakeClient(Clock())

    async def flow(workflow):
        return {"total": await workflow.step("sum", lambda: 1 + 2)}

    outcome = execute(client, flow)
    assert outcome.status is Status.COMPLETED and outcome.exit_code == 0
    assert outcome.output == {"total": 3}
    assert client.events == [(EventType.COMPLETED, msgpack.packb({"total": 3}))]
    assert client.heartbeats == "stopped"


def test_the_output_uses_the_workflow_serializer():
    client = FakeClient(Clock())
    execute(client, lambda workflow: [1, "a"], serializer=JsonSerializer())
    assert client.events == [(EventType.COMPLETED, b'[1,"a"]')]


def test_an_exception_is_reported_as_failed_with_its_message():
    client = FakeClient(Clock())

    def flow(workflow):
        raise ValueError("card declined")

    outcome = execute(client, flow)
    assert outcome.status is Status.FAILED and outcome.exit_code == 1
    assert outcome.error == "ValueError: card declined"
    assert client.events == [(EventType.FAILED, b"ValueError: card declined")]


def test_an_output_that_cannot_be_serialized_fails_the_workflow():
    client = FakeClient(Clock())
    outcome = execute(client, lambda workflow: object())
    assert outcome.status is Status.FAILED
    assert outcome.error.startswith("the output cannot be serialized")


def test_a_cancelled_workflow_reports_nothing_more():
    client = FakeClient(Clock())
    client.send_signal(SignalType.CANCEL)

    async def flow(workflow):
        await workflow.step("a", lambda: 1)

    outcome = execute(client, flow)
    assert outcome.status is Status.CANCELLED and outcome.exit_code == 0
    assert client.events == []
    assert client.status is Status.CANCELLED


def test_a_cancel_swallowed_by_the_workflow_is_still_a_cancel():
    client = FakeClient(Clock())
    client.send_signal(SignalType.CANCEL)

    async def flow(workflow):
        try:
            await workflow.step("a", lambda: 1)
        except WorkflowCancelled:
            return "ignored"

    assert execute(client, flow).status is Status.CANCELLED
    assert client.events == []


def test_a_paused_workflow_ends_suspended():
    client = FakeClient(Clock())
    client.send_signal(SignalType.PAUSE)

    async def flow(workflow):
        await workflow.step("a", lambda: 1)
        await workflow.step("b", lambda: 2)

    outcome = execute(client, flow)
    assert outcome.status is Status.SUSPENDED and outcome.exit_code == 0
    assert client.events == [(EventType.SUSPENDED, b"")]
    assert "b" not in client.checkpoints


class LostAnswerClient(FakeClient):
    """Records the end, then loses the answer: the re-registration is refused."""

    async def instance_event(self, event_type, payload=b"", **fields):
        await super().instance_event(event_type, payload, **fields)
        raise RegistrationRefused(self.instance_id, "already ended", self.status)


def test_an_end_whose_answer_was_lost_counts_as_reported():
    client = LostAnswerClient(Clock())
    outcome = execute(client, lambda workflow: "done")
    assert outcome.status is Status.COMPLETED


class UnreachableClient(FakeClient):
    async def checkpoint(self, checkpoint_id, state):
        raise ServerUnreachable(300.0, OSError("down"))


def test_a_lost_server_is_not_reported_as_a_failed_workflow():
    client = UnreachableClient(Clock())

    async def flow(workflow):
        await workflow.step("a", lambda: 1)

    with pytest.raises(ServerUnreachable):
        execute(client, flow)
    assert client.events == []
