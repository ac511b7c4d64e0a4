"""Every protocol operation through the blocking client; prints the answers as JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from runtara.sdk import Event, EventType
from runtara.sdk.blocking import connect


def plain(value):
    """Dataclasses, enums and bytes as JSON-friendly values."""
    if hasattr(value, "__dataclass_fields__"):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(item) for item in value)
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "value"):
        return value.value
    return value


with connect() as client:
    answers = {
        "registration": client.registration,
        "health": client.health(),
        "first_checkpoint": client.checkpoint("cp", b"one"),
        "second_checkpoint": client.checkpoint("cp", b"two"),
        "get_checkpoint": client.get_checkpoint("cp"),
        "missing_checkpoint": client.get_checkpoint("absent"),
        "sleep": client.sleep(50, "nap"),
        "custom_event": client.instance_event(EventType.CUSTOM, b"hello", subtype="greeting"),
        "batch": client.instance_event_batch(
            [
                Event(EventType.HEARTBEAT),
                Event(EventType.COMPLETED, b"out"),
                Event(EventType.FAILED),
            ]
        ),
        "retry_attempt": client.retry_attempt("cp", 1, "boom"),
        "poll_signals": client.poll_signals("cp"),
        "signal_ack": client.signal_ack("cancel"),
        "status": client.get_instance_status(),
        "register_again": client.register_instance(),
    }
json.dump(plain(answers), sys.stdout)
