"""``RUNTARA_LOG_FORMAT=json``: one JSON object per log event."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure

from runtara.logformat import json_log_observer


def logged(emit) -> list[dict]:
    output = io.StringIO()
    publisher = LogPublisher(json_log_observer(output))
    emit(Logger(namespace="runtara.test", observer=publisher))
    lines = output.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_an_event_is_its_message_and_its_named_fields():
    (record,) = logged(
        lambda log: log.warn(
            "checkpoint {checkpoint_id} saved for {instance_id}",
            checkpoint_id="cp-1",
            instance_id="i\n<2>",
            size=3,
        )
    )

    assert record["level"] == "warn"
    assert record["namespace"] == "runtara.test"
    assert record["message"] == "checkpoint cp-1 saved for i\n<2>"
    assert (record["checkpoint_id"], record["instance_id"], record["size"]) == ("cp-1", "i\n<2>", 3)
    assert record["time"].endswith("Z") and "T" in record["time"]


def test_values_json_cannot_hold_are_written_as_their_repr():
    (record,) = logged(lambda log: log.info("{thing}", thing=object, data=b"\xff"))

    assert record["thing"] == repr(object)
    assert record["data"] == repr(b"\xff")


def test_a_failure_carries_its_traceback():
    def emit(log):
        try:
            raise ValueError("broken")
        except ValueError:
            log.failure("operation {operation} failed", Failure(), operation="checkpoint")

    (record,) = logged(emit)

    assert record["level"] == "critical"
    assert record["message"] == "operation checkpoint failed"
    assert "ValueError: broken" in record["traceback"]
