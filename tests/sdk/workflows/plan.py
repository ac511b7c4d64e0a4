"""The plan a test workflow follows, and the journal it keeps.

``WORKFLOW_PLAN`` (JSON) is a list of actions, run in order:

- ``{"step": "a", "delay": 0.2}``: a step that records ``effect a`` (its side
  effect) when its function runs, then takes ``delay`` seconds;
  ``"fail_times": n`` makes its first n attempts (in this process) fail;
- ``{"sleep": "nap", "seconds": 2}``: a durable sleep;
- ``{"signal": "approval", "timeout": 5}``: a wait for a custom signal.

``WORKFLOW_JOURNAL`` is the file the workflow appends one line per event to:
``started``, ``effect <step>``, ``done <step> <result>``, ``sleeping <name>``,
``woke <name> <slept_ms> <wake_at_ms>``, ``waiting <name>``,
``received <name> <payload>``, ``outcome <status>``. The tests read it to
count side effects and to know how far the workflow got.

The output is a map of every action's name to its result.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from runtara.sdk import Backoff, RetryPolicy, SdkConfig, config_from_env

STEP_RETRY = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, maximum=0.2))


def load_plan() -> list[dict[str, Any]]:
    return json.loads(os.environ["WORKFLOW_PLAN"])


def tuned_config() -> SdkConfig:
    """The configuration from the environment, tuned to notice a dead server quickly;
    with ``WORKFLOW_SDK_DEFAULTS`` set, the SDK's own timeouts and backoff."""
    if os.environ.get("WORKFLOW_SDK_DEFAULTS"):
        return config_from_env()
    return config_from_env(
        idle_timeout=2.0,
        keepalive_interval=0.5,
        reconnect_backoff=Backoff(initial=0.05, multiplier=2.0, maximum=0.5),
        give_up_after=60.0,
    )


class Journal:
    """Appends lines to ``WORKFLOW_JOURNAL`` (flushed and synced at once)."""

    def __init__(self) -> None:
        self.path = os.environ["WORKFLOW_JOURNAL"]
        self.attempts: Counter[str] = Counter()

    def write(self, *words: object) -> None:
        with open(self.path, "a", encoding="utf-8") as journal:
            journal.write(" ".join(str(word) for word in words) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def effect(self, action: dict[str, Any]) -> str:
        """The side effect of a step: recorded, then failed if the plan says so."""
        name = action["step"]
        self.write("effect", name)
        self.attempts[name] += 1
        if self.attempts[name] <= action.get("fail_times", 0):
            raise RuntimeError(f"{name} failed on attempt {self.attempts[name]}")
        return f"{name}-result"
