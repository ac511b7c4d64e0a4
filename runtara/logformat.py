"""Logs as one JSON object per line, for log shippers (``RUNTARA_LOG_FORMAT=json``).

Each ``twisted.logger`` event becomes one line::

    {"time": "2026-01-02T03:04:05.678Z", "level": "info",
     "namespace": "runtara.service.ListenerService",
     "message": "runtara-core listening on QUIC 0.0.0.0:8001 ...",
     "host": "0.0.0.0", "port": 8001, ...}

``message`` is the event formatted as the text log shows it; every named
field of the event follows (values JSON cannot hold are written as their
``repr``); a logged failure adds ``traceback``. Twisted's own
``jsonFileLogObserver`` writes a format meant to be read back by Twisted
(no formatted message, record separators), hence this one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

JSON_FORMAT = "json"
TEXT_FORMAT = "text"
LOG_FORMATS = (TEXT_FORMAT, JSON_FORMAT)

_LEGACY_KEYS = frozenset({"message", "format", "isError", "system", "why", "failure", "time"})
"""Keys of legacy ``twisted.python.log`` events, already rendered in ``message``."""


def event_as_json(event: Mapping[str, Any]) -> str:
    """One log event as one line of JSON (ending in a newline)."""
    moment = datetime.fromtimestamp(event.get("log_time", 0.0), UTC)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(dict(event)),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, default=repr) + "\n"


def _plain(value: Any) -> Any:
    """``value`` if JSON holds it as it is, else its ``repr``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def json_log_observer(output: IO[str]) -> ILogObserver:
    """An observer writing each event to ``output`` as ``event_as_json`` does."""
    return FileLogObserver(output, event_as_json)


def json_to_stdout() -> ILogObserver:
    """The observer ``twistd --logger`` makes for ``RUNTARA_LOG_FORMAT=json``."""
    return json_log_observer(sys.stdout)
