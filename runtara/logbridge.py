"""Bridge aioquic's stdlib ``logging`` into ``twisted.logger``.

aioquic logs through the stdlib logger ``quic`` (and children), with a
per-connection adapter that prefixes messages with ``[connection id]``.
``bridge_stdlib_logging`` sends those records to Twisted's global log
publisher as structured events, once, and stops them from reaching the
stdlib root logger (whose last-resort handler would print to stderr).
"""

from __future__ import annotations

import logging
import re

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["AIOQUIC_LOGGER", "bridge_stdlib_logging"]

AIOQUIC_LOGGER = "quic"
"""Name of the stdlib logger aioquic writes to."""

_CONNECTION_PREFIX = re.compile(r"\[(?P<connection_id>[0-9a-fA-F]+)\] ")


def _level_of(levelno: int) -> LogLevel:
    if levelno >= logging.CRITICAL:
        return LogLevel.critical
    if levelno >= logging.ERROR:
        return LogLevel.error
    if levelno >= logging.WARNING:
        return LogLevel.warn
    if levelno >= logging.INFO:
        return LogLevel.info
    return LogLevel.debug


class _TwistedLogHandler(logging.Handler):
    """Re-emits stdlib log records as ``twisted.logger`` events."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        connection_id = None
        prefix = _CONNECTION_PREFIX.match(message)
        if prefix is not None:
            connection_id = prefix.group("connection_id")
            message = message[prefix.end() :]
        fields = {
            "quic_message": message,
            "quic_connection_id": connection_id,
            "stdlib_logger": record.name,
        }
        log = Logger(namespace=record.name)
        if record.exc_info and record.exc_info[1] is not None:
            _, value, traceback = record.exc_info
            log.failure(
                "{quic_message}",
                Failure(value, type(value), traceback),
                _level_of(record.levelno),
                **fields,
            )
        else:
            log.emit(_level_of(record.levelno), "{quic_message}", **fields)


def bridge_stdlib_logging(level: int = logging.WARNING) -> None:
    """Route aioquic's log records at ``level`` and above to ``twisted.logger``.

    Idempotent: a second call only changes the level. The default,
    ``WARNING``, keeps aioquic's per-packet ``DEBUG`` and per-connection
    ``INFO`` lines out of the log; pass ``logging.DEBUG`` to trace QUIC.
    """
    stdlib_logger = logging.getLogger(AIOQUIC_LOGGER)
    stdlib_logger.setLevel(level)
    stdlib_logger.propagate = False
    if not any(isinstance(handler, _TwistedLogHandler) for handler in stdlib_logger.handlers):
        stdlib_logger.addHandler(_TwistedLogHandler())
