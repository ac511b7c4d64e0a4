"""Backoff and retry policies: pure arithmetic, no clock.

``Backoff.delay(n)`` is the wait before retry number ``n`` (``n = 1`` after
the first failure): ``initial * multiplier ** (n - 1)``, capped at
``maximum``, then shortened by up to ``jitter`` of itself at random. The
SDK uses one ``Backoff`` for reconnecting and retrying calls, and a
``RetryPolicy`` (attempts + backoff + which errors) for the steps of a
workflow.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "NO_RETRY", "RetryPolicy"]


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff.

    ``jitter`` (0 to 1) scales each delay by a random factor in
    ``[1 - jitter, 1]``, so many clients that lost the same server do not
    come back in lockstep; 0 makes the delays exact.
    """

    initial: float = 1.0
    multiplier: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ValueError(f"initial must be >= 0, not {self.initial!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({self.maximum!r}) must be >= initial ({self.initial!r})")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")

    def delay(self, failures: int, uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (``failures >= 1``).

        ``uniform`` returns a number in ``[0, 1)``; it is only called when
        ``jitter`` is not 0.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, not {failures!r}")
        try:
            base = min(self.maximum, self.initial * self.multiplier ** (failures - 1))
        except OverflowError:
            base = self.maximum
        if self.jitter:
            base *= 1 - self.jitter * uniform()
        return base


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is attempted, how long to wait between attempts, and on which errors.

    ``max_attempts`` counts every attempt, the first included (1 = never
    retry). An error is retried when it is an instance of one of
    ``retry_on`` and of none of ``give_up_on``. Workflow interruptions
    (cancel, pause) are never retried.
    """

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts!r}")

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether to try again after attempt number ``attempt`` failed with ``error``."""
        if attempt >= self.max_attempts:
            return False
        return isinstance(error, self.retry_on) and not isinstance(error, self.give_up_on)

    def delay(self, attempt: int, uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt number ``attempt`` failed."""
        return self.backoff.delay(attempt, uniform)


NO_RETRY = RetryPolicy(max_attempts=1)
"""Run a step once; its first error is final."""
