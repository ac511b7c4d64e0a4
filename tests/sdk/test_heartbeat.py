"""Background heartbeats on a task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from runtara.sdk.heartbeat import Heartbeat


def test_a_beat_every_interval_after_the_first_interval():
    clock = Clock()
    sent: list[float] = []

    def send():
        sent.append(clock.seconds())
        return succeed(None)

    heartbeat = Heartbeat(clock, 2.0, send)
    heartbeat.start()
    clock.pump([1.0] * 7)
    assert sent == [2.0, 4.0, 6.0]
    assert heartbeat.sent == 3


def test_a_beat_is_skipped_while_the_previous_one_is_unanswered():
    clock = Clock()
    answers: list[Deferred[None]] = []

    def send():
        answers.append(Deferred())
        return answers[-1]

    heartbeat = Heartbeat(clock, 1.0, send)
    heartbeat.start()
    clock.pump([1.0] * 3)
    assert len(answers) == 1
    answers[0].callback(None)
    clock.advance(1.0)
    assert len(answers) == 2


def test_a_failed_beat_does_not_stop_the_heartbeat():
    clock = Clock()
    calls: list[float] = []

    def send():
        calls.append(clock.seconds())
        return fail(RuntimeError("server gone"))

    heartbeat = Heartbeat(clock, 1.0, send)
    heartbeat.start()
    clock.pump([1.0] * 3)
    assert calls == [1.0, 2.0, 3.0]
    assert heartbeat.running and heartbeat.sent == 0


def test_stop_cancels_the_beat_in_flight():
    clock = Clock()
    answer: Deferred[None] = Deferred()
    heartbeat = Heartbeat(clock, 1.0, lambda: answer)
    heartbeat.start()
    clock.advance(1.0)
    heartbeat.stop()
    assert answer.called
    assert not heartbeat.running
    assert clock.getDelayedCalls() == []


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError):
        Heartbeat(Clock(), 0, lambda: succeed(None))
