"""The concurrent-instance limit and server-held sleep timers, on a fake clock."""

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from runtara.session import Admission, Session
from runtara.sleeper import Sleeper


def session():
    return Session(peer=("127.0.0.1", 1), close=lambda reason: None)


def test_admission_refuses_one_more_than_the_limit():
    admission, owner = Admission(2), session()
    assert admission.try_admit("a", owner)
    assert admission.try_admit("b", owner)
    assert not admission.try_admit("c", owner)
    assert admission.try_admit("a", session()), "an admitted instance re-registers"
    admission.release("a")
    assert admission.try_admit("c", owner)


def test_closing_a_connection_frees_its_instances_only():
    admission, first, second = Admission(3), session(), session()
    admission.try_admit("a", first)
    admission.try_admit("b", first)
    admission.try_admit("c", second)
    admission.release_session(first)
    assert len(admission) == 1
    assert admission.is_counted("c")


def test_a_woken_instance_counts_again_even_over_the_limit():
    admission = Admission(1)
    admission.try_admit("a", session())
    admission.readmit("b", session())
    assert len(admission) == 2


def test_sleeper_fires_at_the_deadline_on_the_clock():
    clock = Clock()
    sleeper, owner = Sleeper(clock), session()
    fired = []
    sleeper.wait(owner, 5).addCallback(fired.append)
    clock.advance(4.999)
    assert fired == []
    clock.advance(0.001)
    assert fired == [None]
    assert len(sleeper) == 0


def test_closing_a_connection_drops_its_timers_only():
    clock = Clock()
    sleeper, first, second = Sleeper(clock), session(), session()
    dropped = sleeper.wait(first, 10)
    kept = sleeper.wait(second, 10)
    sleeper.cancel_session(first)
    with pytest.raises(CancelledError):
        dropped.result.raiseException()
    dropped.addErrback(lambda failure: None)
    assert clock.getDelayedCalls() and len(sleeper) == 1
    clock.advance(10)
    assert kept.called


def test_a_closed_sleeper_drops_every_timer_and_refuses_new_ones():
    clock = Clock()
    sleeper, owner = Sleeper(clock), session()
    waiting = sleeper.wait(owner, 10)
    failures = []
    waiting.addErrback(failures.append)
    sleeper.close()
    late = sleeper.wait(owner, 1)
    late.addErrback(failures.append)
    assert [failure.type for failure in failures] == [CancelledError, CancelledError]
    assert clock.getDelayedCalls() == []
