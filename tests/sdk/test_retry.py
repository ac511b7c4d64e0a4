"""Backoff and retry policy arithmetic, and step retries on a real instance
(``tests/sdk/live.py``) whose waits run on a ``task.Clock``."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from runtara.sdk import NO_RETRY, Backoff, RetryPolicy
from tests.sdk.live import START_SECONDS


def test_exponential_delays_up_to_the_cap():
    backoff = Backoff(initial=0.1, multiplier=2.0, maximum=1.0)
    assert [backoff.delay(n) for n in range(1, 8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    )


def test_a_huge_failure_count_stays_at_the_cap():
    assert Backoff(initial=1.0, multiplier=10.0, maximum=30.0).delay(10_000) == 30.0


def test_a_multiplier_of_one_is_a_constant_delay():
    assert {Backoff(initial=0.5, multiplier=1.0, maximum=9).delay(n) for n in range(1, 20)} == {0.5}


def test_jitter_shortens_the_delay_by_at_most_its_fraction():
    backoff = Backoff(initial=1.0, multiplier=2.0, maximum=60.0, jitter=0.25)
    assert backoff.delay(3, uniform=lambda: 0.0) == 4.0
    assert backoff.delay(3, uniform=lambda: 0.5) == 3.5
    assert backoff.delay(3, uniform=lambda: 0.999999) == pytest.approx(3.0, abs=1e-5)


def test_without_jitter_no_random_number_is_drawn():
    def no_random() -> float:
        raise AssertionError("drawn")

    assert Backoff(initial=2.0).delay(1, uniform=no_random) == 2.0


@pytest.mark.parametrize(
    "arguments",
    [
        {"initial": -1.0},
        {"multiplier": 0.5},
        {"initial": 5.0, "maximum": 1.0},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_invalid_backoffs(arguments):
    with pytest.raises(ValueError):
        Backoff(**arguments)


def test_failures_start_at_one():
    with pytest.raises(ValueError):
        Backoff().delay(0)


def test_retry_policy_counts_every_attempt():
    policy = RetryPolicy(max_attempts=3)
    error = RuntimeError("boom")
    assert [policy.should_retry(attempt, error) for attempt in (1, 2, 3)] == [True, True, False]
    assert not NO_RETRY.should_retry(1, error)


def test_retry_policy_filters_errors():
    policy = RetryPolicy(max_attempts=5, retry_on=(OSError,), give_up_on=(PermissionError,))
    assert policy.should_retry(1, ConnectionError("reset"))
    assert not policy.should_retry(1, PermissionError("denied"))
    assert not policy.should_retry(1, ValueError("bad input"))


def test_retry_policy_delays_follow_its_backoff():
    policy = RetryPolicy(backoff=Backoff(initial=1.0, multiplier=3.0, maximum=5.0))
    assert [policy.delay(n) for n in (1, 2, 3)] == [1.0, 3.0, 5.0]


def test_retry_policy_needs_one_attempt():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class Flaky:
    """Fails ``failures`` times, recording when each call happened (seconds after START)."""

    def __init__(self, clock: Clock, failures: int) -> None:
        self.clock = clock
        self.failures = failures
        self.called_at: list[float] = []

    def __call__(self, value: str) -> str:
        self.called_at.append(self.clock.seconds() - START_SECONDS)
        if len(self.called_at) <= self.failures:
            raise ConnectionError(f"attempt {len(self.called_at)} failed")
        return value.upper()


@pytest_twisted.ensureDeferred
async def test_a_step_is_retried_after_each_backoff_and_every_failure_is_recorded(instance):
    clock = instance.clock
    policy = RetryPolicy(max_attempts=4, backoff=Backoff(initial=1.0, multiplier=2.0, maximum=3.0))
    workflow = instance.workflow(retry_policy=policy)
    flaky = Flaky(clock, failures=3)

    result = ensureDeferred(workflow.step("charge", flaky, "ok"))
    for _ in range(3):
        await instance.settled(result)
        assert not result.called
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())

    assert await result == "OK"
    assert flaky.called_at == [0.0, 1.0, 3.0, 6.0]
    assert instance.attempts() == [
        ("charge", 1, "ConnectionError: attempt 1 failed"),
        ("charge", 2, "ConnectionError: attempt 2 failed"),
        ("charge", 3, "ConnectionError: attempt 3 failed"),
    ]


@pytest_twisted.ensureDeferred
async def test_a_step_gives_up_after_max_attempts_with_the_last_error(instance):
    clock = instance.clock
    policy = RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.5))
    workflow = instance.workflow(retry_policy=policy)

    result = ensureDeferred(workflow.step("charge", Flaky(clock, failures=9), "ok"))
    await instance.settled(result)
    clock.advance(0.5)

    with pytest.raises(ConnectionError, match="attempt 2 failed"):
        await result
    assert [attempt for _, attempt, _ in instance.attempts()] == [1, 2]
    assert await instance.stored("charge") is None


@pytest_twisted.ensureDeferred
async def test_an_error_the_policy_does_not_retry_fails_at_once(instance):
    workflow = instance.workflow(retry_policy=RetryPolicy(retry_on=(ConnectionError,)))

    def invalid() -> None:
        raise ValueError("bad order")

    with pytest.raises(ValueError, match="bad order"):
        await workflow.step("validate", invalid)
    assert instance.attempts() == [("validate", 1, "ValueError: bad order")]
    assert instance.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_per_step_policy_overrides_the_workflow_default(instance):
    clock = instance.clock
    workflow = instance.workflow(retry_policy=RetryPolicy(max_attempts=5))

    with pytest.raises(ConnectionError):
        await workflow.step("once", Flaky(clock, failures=1), "x", retry=NO_RETRY)
    assert len(instance.attempts()) == 1
