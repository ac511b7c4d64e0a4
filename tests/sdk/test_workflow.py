"""Workflow's durable building blocks over an in-memory instance (FakeClient)."""

from __future__ import annotations

from datetime import timedelta

import msgpack
import pytest
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock

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
from tests.sdk.fakes import FakeClient, fired


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def client(clock) -> FakeClient:
    return FakeClient(clock)


@pytest.fixture
def workflow(client, clock) -> Workflow:
    return Workflow(client, clock, signal_poll_interval=1.0)


def run(coroutine):
    return fired(ensureDeferred(coroutine))


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value):
        self.calls += 1
        return {"value": value, "items": (1, 2)}


# -- step ------------------------------------------------------------------------


def test_a_step_runs_once_and_is_checkpointed(workflow, client):
    effect = Counter()
    assert run(workflow.step("a", effect, 7)) == {"value": 7, "items": [1, 2]}
    assert effect.calls == 1
    assert msgpack.unpackb(client.checkpoints["a"]) == {"value": 7, "items": [1, 2]}


def test_a_replayed_step_returns_its_checkpoint_without_running(client, clock):
    client.checkpoints["a"] = msgpack.packb({"value": 1})
    effect = Counter()
    assert run(Workflow(client, clock).step("a", effect, 99)) == {"value": 1}
    assert effect.calls == 0
    assert client.calls == ["get_checkpoint a"]


def test_with_a_replay_index_a_new_step_is_one_call(client, clock):
    client.restart()
    workflow = Workflow(client, clock)

    assert run(workflow.step("a", lambda: "new")) == "new"

    assert client.calls == ["checkpoint a"]


def test_with_a_replay_index_a_finished_step_is_one_read(client, clock):
    client.checkpoints["a"] = msgpack.packb("stored")
    client.restart()
    effect = Counter()

    assert run(Workflow(client, clock).step("a", effect, 1)) == "stored"

    assert effect.calls == 0
    assert client.calls == ["get_checkpoint a"]


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self):
        self.calls += 1
        raise RuntimeError(f"attempt {self.calls} of this run")


THREE_QUICK_ATTEMPTS = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.0, maximum=0.0))


@pytest.mark.parametrize("replay_index", [True, False], ids=["index", "no-index"])
def test_a_step_continues_its_attempt_count_after_a_restart(client, clock, replay_index):
    client.attempts += [("flaky", 1, "RuntimeError: one"), ("flaky", 2, "RuntimeError: two")]
    client.restart(replay_index=replay_index)
    effect = Failing()

    with pytest.raises(RuntimeError, match="attempt 1 of this run"):
        run(Workflow(client, clock).step("flaky", effect, retry=THREE_QUICK_ATTEMPTS))

    assert effect.calls == 1
    assert client.attempts[-1] == ("flaky", 3, "RuntimeError: attempt 1 of this run")


def test_a_step_whose_attempts_were_used_up_before_a_restart_does_not_run(client, clock):
    client.attempts += [("broken", n, f"RuntimeError: {n}") for n in (1, 2, 3)]
    client.restart()
    effect = Failing()

    with pytest.raises(RetriesExhausted) as caught:
        run(Workflow(client, clock).step("broken", effect, retry=THREE_QUICK_ATTEMPTS))

    assert effect.calls == 0
    assert (caught.value.attempts, caught.value.last_error) == (3, "RuntimeError: 3")
    assert str(caught.value) == (
        "step 'broken' already failed 3 of the 3 attempts its retry policy allows;"
        " the last failed with RuntimeError: 3"
    )


def test_when_another_run_saved_first_its_result_wins(workflow, client):
    def effect():
        client.checkpoints["a"] = msgpack.packb("theirs")
        return "ours"

    assert run(workflow.step("a", effect)) == "theirs"


def test_a_step_may_return_a_deferred_or_be_a_coroutine(workflow):
    async def coroutine(value):
        return value * 2

    assert run(workflow.step("d", lambda: succeed("deferred"))) == "deferred"
    assert run(workflow.step("c", coroutine, 21)) == 42


def test_a_step_waits_for_its_deferred(workflow, client):
    answer: Deferred[str] = Deferred()
    result = ensureDeferred(workflow.step("slow", lambda: answer))
    assert not result.called and "slow" not in client.checkpoints
    answer.callback("late")
    assert fired(result) == "late"


def test_a_step_serializer_can_be_chosen(workflow, client):
    assert run(workflow.step("j", lambda: {"k": 1}, serializer=JsonSerializer())) == {"k": 1}
    assert client.checkpoints["j"] == b'{"k":1}'


def test_step_keyword_arguments_reach_the_function(workflow):
    assert run(workflow.step("kw", lambda a, b=0: a - b, 10, b=3)) == 7


def test_names_are_unique_within_a_run(workflow):
    run(workflow.step("a", lambda: 1))
    with pytest.raises(ValueError, match="already used"):
        run(workflow.step("a", lambda: 2))
    with pytest.raises(ValueError, match="already used"):
        run(workflow.sleep(1, "a"))
    with pytest.raises(ValueError, match="must not be empty"):
        run(workflow.step("", lambda: 3))


# -- signals observed on checkpoint answers ----------------------------------------


def test_cancel_is_acknowledged_and_raised(workflow, client):
    client.send_signal(SignalType.CANCEL, b"stop")
    with pytest.raises(WorkflowCancelled) as caught:
        run(workflow.step("a", lambda: 1))
    assert caught.value.payload == b"stop"
    assert client.status is Status.CANCELLED
    assert client.calls[-1] == "signal_ack cancel"
    assert "a" in client.checkpoints
    assert workflow.interrupted is caught.value


def test_after_an_interruption_every_durable_call_raises_it_again(workflow, client):
    client.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        run(workflow.step("a", lambda: 1))
    with pytest.raises(WorkflowCancelled):
        run(workflow.step("b", lambda: 2))
    assert "b" not in client.checkpoints


def test_pause_is_acknowledged_reported_suspended_and_raised(workflow, client):
    client.send_signal(SignalType.PAUSE)
    with pytest.raises(WorkflowPaused):
        run(workflow.step("a", lambda: 1))
    assert client.calls[-2:] == ["signal_ack pause", "instance_event suspended"]
    assert client.status is Status.SUSPENDED


def test_a_stale_resume_is_acknowledged_and_the_workflow_goes_on(workflow, client):
    client.send_signal(SignalType.RESUME)
    assert run(workflow.step("a", lambda: 1)) == 1
    assert client.pending is None
    assert client.status is Status.RUNNING


def test_check_signals_polls_now(workflow, client):
    run(workflow.check_signals())
    client.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        run(workflow.check_signals())


# -- sleep ---------------------------------------------------------------------------


def test_sleep_is_durable_and_replays_without_sleeping(client, clock):
    slept = ensureDeferred(Workflow(client, clock).sleep(timedelta(seconds=5), "nap"))
    clock.advance(4.9)
    assert not slept.called
    clock.advance(0.1)
    assert fired(slept).slept_ms == 5000

    replay = run(Workflow(client, clock).sleep(5, "nap"))
    assert replay.slept_ms == 0


def test_a_cancel_is_seen_right_after_a_sleep(workflow, client, clock):
    slept = ensureDeferred(workflow.sleep(1, "nap"))
    client.send_signal(SignalType.CANCEL)
    clock.advance(1)
    with pytest.raises(WorkflowCancelled):
        fired(slept)


def test_a_negative_duration_is_refused(workflow):
    with pytest.raises(ValueError, match="negative"):
        run(workflow.sleep(-1, "nap"))


# -- wait_for_signal -----------------------------------------------------------------


def test_a_signal_sent_before_the_wait_is_returned_at_once(workflow, client):
    client.send_custom_signal("approval", b"yes")
    assert run(workflow.wait_for_signal("approval")) == b"yes"
    assert msgpack.unpackb(client.checkpoints["approval#signal"]) == {"payload": b"yes"}
    assert "approval" not in client.custom_signals


def test_the_wait_polls_until_the_signal_arrives(workflow, client, clock):
    waiting = ensureDeferred(workflow.wait_for_signal("approval"))
    clock.pump([1.0] * 3)
    assert not waiting.called
    client.send_custom_signal("approval", b"now")
    clock.advance(1.0)
    assert fired(waiting) == b"now"
    assert client.calls.count("poll_signals approval peek") == 5


def test_a_received_signal_is_replayed_from_its_checkpoint(client, clock):
    client.send_custom_signal("approval", b"first")
    run(Workflow(client, clock).wait_for_signal("approval"))
    client.send_custom_signal("approval", b"second")
    assert run(Workflow(client, clock).wait_for_signal("approval")) == b"first"
    assert client.custom_signals == {"approval": b"second"}


def test_the_deadline_is_checkpointed_and_kept_across_runs(client, clock):
    first = ensureDeferred(Workflow(client, clock).wait_for_signal("approval", timeout=10))
    deadline_ms = msgpack.unpackb(client.checkpoints["approval#deadline"])
    assert deadline_ms == int(clock.seconds() * 1000) + 10_000
    clock.advance(6)
    first.cancel()  # the process died 6 s into the wait
    first.addErrback(lambda failure: failure.trap(CancelledError))

    second = ensureDeferred(Workflow(client, clock).wait_for_signal("approval", timeout=10))
    clock.pump([1.0] * 3)
    assert not second.called
    clock.pump([1.0])
    with pytest.raises(SignalTimeout) as caught:
        fired(second)
    assert caught.value.deadline_ms == deadline_ms
    assert int(clock.seconds() * 1000) == deadline_ms


def test_a_timed_out_wait_times_out_again_on_replay(client, clock):
    waiting = ensureDeferred(Workflow(client, clock).wait_for_signal("approval", timeout=1))
    clock.advance(1)
    with pytest.raises(SignalTimeout):
        fired(waiting)
    client.send_custom_signal("approval", b"too late")
    with pytest.raises(SignalTimeout):
        run(Workflow(client, clock).wait_for_signal("approval", timeout=1))


def test_a_cancel_while_waiting_stops_the_wait(workflow, client, clock):
    waiting = ensureDeferred(workflow.wait_for_signal("approval"))
    client.send_signal(SignalType.CANCEL)
    clock.advance(1)
    with pytest.raises(WorkflowCancelled):
        fired(waiting)
    assert client.status is Status.CANCELLED


def test_a_signal_received_with_a_cancel_is_stored_before_cancelling(workflow, client):
    client.send_custom_signal("approval", b"yes")
    client.send_signal(SignalType.CANCEL)
    with pytest.raises(WorkflowCancelled):
        run(workflow.wait_for_signal("approval"))
    assert msgpack.unpackb(client.checkpoints["approval#signal"]) == {"payload": b"yes"}


def test_signal_poll_interval_must_be_positive(client, clock):
    with pytest.raises(ValueError):
        Workflow(client, clock, signal_poll_interval=0)
