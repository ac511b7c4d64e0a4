"""Workflow's durable building blocks, on a real instance of a runtara-core in this
process (``tests/sdk/live.py``); the workflow's waits run on a ``task.Clock``."""

from __future__ import annotations

import time
from datetime import timedelta

import msgpack
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed

from runtara.persistence import store
from runtara.sdk import (
    Backoff,
    JsonSerializer,
    RetriesExhausted,
    RetryPolicy,
    SignalTimeout,
    SignalType,
    Status,
    Workflow,
    WorkflowCancelled,
    WorkflowPaused,
)
from tests.sdk.live import TENANT
from tests.sdk.support import eventually

pytestmark = pytest.mark.e2e

SLEEP_S = 0.3
"""A durable sleep the server really sleeps."""


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value):
        self.calls += 1
        return {"value": value, "items": (1, 2)}


# -- step ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_step_runs_once_and_is_checkpointed(instance):
    effect = Counter()
    assert await instance.workflow().step("a", effect, 7) == {"value": 7, "items": [1, 2]}
    assert effect.calls == 1
    assert msgpack.unpackb(await instance.stored("a")) == {"value": 7, "items": [1, 2]}


@pytest_twisted.ensureDeferred
async def test_a_replayed_step_returns_its_checkpoint_without_running(instance):
    await instance.save_checkpoint("a", msgpack.packb({"value": 1}))
    await instance.new_run()
    effect = Counter()
    assert await instance.workflow().step("a", effect, 99) == {"value": 1}
    assert effect.calls == 0
    assert instance.calls == ["get_checkpoint a"]


@pytest_twisted.ensureDeferred
async def test_a_new_step_is_saved_with_one_call(instance):
    workflow = instance.workflow()
    assert await workflow.step("a", lambda: "new") == "new"
    assert await instance.workflow().step("a", lambda: "again") == "new"
    assert instance.calls == ["checkpoint a", "get_checkpoint a"]


@pytest_twisted.ensureDeferred
async def test_without_a_replay_index_every_step_asks_first(instance, monkeypatch):
    monkeypatch.setattr(store, "MAX_REPLAY_INDEX", 0)
    await instance.save_checkpoint("a", msgpack.packb("stored"))
    await instance.new_run()
    assert instance.client.registration.replay_index is None
    workflow = instance.workflow()
    assert await workflow.step("a", lambda: "not run") == "stored"
    assert await workflow.step("b", lambda: "new") == "new"
    assert instance.calls == ["get_checkpoint a", "get_checkpoint b", "checkpoint b"]


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self):
        self.calls += 1
        raise RuntimeError(f"call {self.calls} of this run")


THREE_QUICK_ATTEMPTS = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.0, maximum=0.0))


async def earlier_runs_failed(instance, checkpoint_id, *messages):
    """Earlier runs of the instance recorded failed attempts of a step, then died."""
    for number, message in enumerate(messages, start=1):
        await instance.persistence.record_retry_attempt(
            instance.instance_id, TENANT, checkpoint_id, number, None, message
        )
    await instance.new_run()


@pytest.mark.parametrize("index_limit", [10_000, 0], ids=["replay-index", "no-replay-index"])
@pytest_twisted.ensureDeferred
async def test_a_step_continues_its_attempt_count_after_a_restart(
    instance, monkeypatch, index_limit
):
    monkeypatch.setattr(store, "MAX_REPLAY_INDEX", index_limit)
    await earlier_runs_failed(instance, "flaky", "RuntimeError: one", "RuntimeError: two")
    effect = Failing()

    with pytest.raises(RuntimeError, match="call 1 of this run"):
        await instance.workflow().step("flaky", effect, retry=THREE_QUICK_ATTEMPTS)

    assert effect.calls == 1
    assert instance.attempts() == [("flaky", 3, "RuntimeError: call 1 of this run")]


@pytest_twisted.ensureDeferred
async def test_a_step_whose_attempts_earlier_runs_used_up_does_not_run(instance):
    await earlier_runs_failed(instance, "broken", *[f"RuntimeError: {n}" for n in (1, 2, 3)])
    effect = Failing()

    with pytest.raises(RetriesExhausted) as caught:
        await instance.workflow().step("broken", effect, retry=THREE_QUICK_ATTEMPTS)

    assert effect.calls == 0
    assert (caught.value.attempts, caught.value.last_error) == (3, "RuntimeError: 3")
    assert str(caught.value) == (
        "step 'broken' already failed 3 of the 3 attempts its retry policy allows;"
        " the last failed with RuntimeError: 3"
    )
    assert instance.calls == []


@pytest_twisted.ensureDeferred
async def test_when_another_run_saved_first_its_result_wins(instance):
    async def effect():
        await instance.save_checkpoint("a", msgpack.packb("theirs"))
        return "ours"

    assert await instance.workflow().step("a", effect) == "theirs"


@pytest_twisted.ensureDeferred
async def test_a_step_may_return_a_deferred_or_be_a_coroutine(instance):
    async def coroutine(value):
        return value * 2

    workflow = instance.workflow()
    assert await workflow.step("d", lambda: succeed("deferred")) == "deferred"
    assert await workflow.step("c", coroutine, 21) == 42


@pytest_twisted.ensureDeferred
async def test_a_step_waits_for_its_deferred(instance):
    called: Deferred[None] = Deferred()
    answer: Deferred[str] = Deferred()

    def slow():
        called.callback(None)
        return answer

    result = ensureDeferred(instance.workflow().step("slow", slow))
    await called
    assert not result.called and await instance.stored("slow") is None
    answer.callback("late")
    assert await result == "late"


@pytest_twisted.ensureDeferred
async def test_a_step_serializer_can_be_chosen(instance):
    workflow = instance.workflow()
    assert await workflow.step("j", lambda: {"k": 1}, serializer=JsonSerializer()) == {"k": 1}
    assert await instance.stored("j") == b'{"k":1}'


@pytest_twisted.ensureDeferred
async def test_step_keyword_arguments_reach_the_function(instance):
    assert await instance.workflow().step("kw", lambda a, b=0: a - b, 10, b=3) == 7


@pytest_twisted.ensureDeferred
async def test_names_are_unique_within_a_run(instance):
    workflow = instance.workflow()
    await workflow.step("a", lambda: 1)
    with pytest.raises(ValueError, match="already used"):
        await workflow.step("a", lambda: 2)
    with pytest.raises(ValueError, match="already used"):
        await workflow.sleep(1, "a")
    with pytest.raises(ValueError, match="must not be empty"):
        await workflow.step("", lambda: 3)


# -- signals observed on checkpoint answers ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_cancel_is_acknowledged_and_raised(instance):
    workflow = instance.workflow()
    await instance.send_signal(SignalType.CANCEL, b"stop")
    with pytest.raises(WorkflowCancelled) as caught:
        await workflow.step("a", lambda: 1)
    assert caught.value.payload == b"stop"
    assert await instance.status() is Status.CANCELLED
    assert instance.calls[-1] == "signal_ack cancel"
    assert await instance.stored("a") is not None
    assert workflow.interrupted is caught.value


@pytest_twisted.ensureDeferred
async def test_after_an_interruption_every_durable_call_raises_it_again(instance):
    workflow = instance.workflow()
    await instance.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        await workflow.step("a", lambda: 1)
    with pytest.raises(WorkflowCancelled):
        await workflow.step("b", lambda: 2)
    assert await instance.stored("b") is None


@pytest_twisted.ensureDeferred
async def test_pause_is_acknowledged_reported_suspended_and_raised(instance):
    await instance.send_signal(SignalType.PAUSE)
    with pytest.raises(WorkflowPaused):
        await instance.workflow().step("a", lambda: 1)
    assert instance.calls[-2:] == ["signal_ack pause", "instance_event suspended"]
    assert await instance.status() is Status.SUSPENDED


@pytest_twisted.ensureDeferred
async def test_a_stale_resume_is_acknowledged_and_the_workflow_goes_on(instance):
    await instance.send_signal(SignalType.RESUME)
    assert await instance.workflow().step("a", lambda: 1) == 1
    assert await instance.pending_signal() is None
    assert await instance.status() is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_check_signals_polls_now(instance):
    workflow = instance.workflow()
    await workflow.check_signals()
    await instance.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        await workflow.check_signals()


# -- sleep ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sleep_is_durable_and_replays_without_sleeping(instance):
    started = time.monotonic()
    slept = await instance.workflow().sleep(timedelta(seconds=SLEEP_S), "nap")
    assert time.monotonic() - started >= SLEEP_S
    assert slept.slept_ms >= SLEEP_S * 1000

    replay = await instance.workflow().sleep(SLEEP_S, "nap")
    assert replay.slept_ms == 0


@pytest_twisted.ensureDeferred
async def test_a_cancel_is_seen_right_after_a_sleep(instance):
    slept = ensureDeferred(instance.workflow().sleep(SLEEP_S, "nap"))
    await eventually(_status_is(instance, Status.SUSPENDED), "the sleep to begin")
    await instance.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        await slept


@pytest_twisted.ensureDeferred
async def test_a_negative_duration_is_refused(instance):
    with pytest.raises(ValueError, match="negative"):
        await instance.workflow().sleep(-1, "nap")


# -- wait_for_signal -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_signal_sent_before_the_wait_is_returned_at_once(instance):
    await instance.send_custom_signal("approval", b"yes")
    assert await instance.workflow().wait_for_signal("approval") == b"yes"
    assert msgpack.unpackb(await instance.stored("approval#signal")) == {"payload": b"yes"}
    assert await instance.take_custom_signal("approval") is None


@pytest_twisted.ensureDeferred
async def test_the_wait_polls_until_the_signal_arrives(instance):
    waiting = ensureDeferred(instance.workflow().wait_for_signal("approval"))
    for _ in range(3):
        await instance.settled(waiting)
        instance.clock.advance(1.0)
    await instance.settled(waiting)
    assert not waiting.called
    await instance.send_custom_signal("approval", b"now")
    instance.clock.advance(1.0)
    assert await waiting == b"now"
    assert instance.calls.count("poll_signals approval") == 5


@pytest_twisted.ensureDeferred
async def test_a_received_signal_is_replayed_from_its_checkpoint(instance):
    await instance.send_custom_signal("approval", b"first")
    await instance.workflow().wait_for_signal("approval")
    await instance.send_custom_signal("approval", b"second")
    assert await instance.workflow().wait_for_signal("approval") == b"first"
    assert await instance.take_custom_signal("approval") == b"second"


@pytest_twisted.ensureDeferred
async def test_the_deadline_is_checkpointed_and_kept_across_runs(instance):
    clock = instance.clock
    first = ensureDeferred(instance.workflow().wait_for_signal("approval", timeout=10))
    await instance.settled(first)
    deadline_ms = msgpack.unpackb(await instance.stored("approval#deadline"))
    assert deadline_ms == int(clock.seconds() * 1000) + 10_000
    clock.advance(6)
    await instance.settled(first)
    first.cancel()  # the process died 6 s into the wait
    first.addErrback(lambda failure: failure.trap(CancelledError))

    second = ensureDeferred(instance.workflow().wait_for_signal("approval", timeout=10))
    for _ in range(3):
        await instance.settled(second)
        clock.advance(1.0)
    await instance.settled(second)
    assert not second.called
    clock.advance(1.0)
    with pytest.raises(SignalTimeout) as caught:
        await second
    assert caught.value.deadline_ms == deadline_ms
    assert int(clock.seconds() * 1000) == deadline_ms


@pytest_twisted.ensureDeferred
async def test_a_timed_out_wait_times_out_again_on_replay(instance):
    waiting = ensureDeferred(instance.workflow().wait_for_signal("approval", timeout=1))
    await instance.settled(waiting)
    instance.clock.advance(1)
    with pytest.raises(SignalTimeout):
        await waiting
    await instance.send_custom_signal("approval", b"too late")
    with pytest.raises(SignalTimeout):
        await instance.workflow().wait_for_signal("approval", timeout=1)


@pytest_twisted.ensureDeferred
async def test_a_cancel_while_waiting_stops_the_wait(instance):
    waiting = ensureDeferred(instance.workflow().wait_for_signal("approval"))
    await instance.settled(waiting)
    await instance.send_signal(SignalType.CANCEL)
    instance.clock.advance(1)
    with pytest.raises(WorkflowCancelled):
        await waiting
    assert await instance.status() is Status.CANCELLED


@pytest_twisted.ensureDeferred
async def test_a_signal_received_with_a_cancel_is_stored_before_cancelling(instance):
    await instance.send_custom_signal("approval", b"yes")
    await instance.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        await instance.workflow().wait_for_signal("approval")
    assert msgpack.unpackb(await instance.stored("approval#signal")) == {"payload": b"yes"}


@pytest_twisted.ensureDeferred
async def test_signal_poll_interval_must_be_positive(instance):
    with pytest.raises(ValueError):
        Workflow(instance.client, instance.clock, signal_poll_interval=0)


def _status_is(instance, status):
    async def check():
        return await instance.status() is status

    return check
