"""aioquic's stdlib logging reaches twisted.logger as structured events."""

from __future__ import annotations

import logging

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from runtara.logbridge import AIOQUIC_LOGGER, bridge_stdlib_logging


@pytest.fixture
def quic_logger():
    logger = logging.getLogger(AIOQUIC_LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def bridged(events):
    return [event for event in events if "quic_message" in event]


def test_records_become_structured_events(quic_logger, logged):
    bridge_stdlib_logging()

    adapter = logging.LoggerAdapter(logging.getLogger("quic.connection"), {})
    adapter.warning("[%s] %s", "0a1b2c", "No common ALPN protocols")

    [event] = bridged(logged)
    assert event["log_level"] == LogLevel.warn
    assert event["log_namespace"] == "quic.connection"
    assert event["quic_connection_id"] == "0a1b2c"
    assert event["stdlib_logger"] == "quic.connection"
    assert formatEvent(event) == "No common ALPN protocols"


def test_per_packet_debug_and_info_are_not_logged_by_default(quic_logger, logged):
    bridge_stdlib_logging()

    quic_logger.debug("packet sent")
    quic_logger.info("Negotiated protocol version %s", "VERSION_1")
    quic_logger.error("boom")

    assert [event["quic_message"] for event in bridged(logged)] == ["boom"]
    assert bridged(logged)[0]["log_level"] == LogLevel.error


def test_installing_twice_keeps_one_handler_and_takes_the_new_level(quic_logger, logged):
    bridge_stdlib_logging()
    bridge_stdlib_logging(logging.DEBUG)

    quic_logger.debug("trace %d", 1)
    quic_logger.critical("fatal")

    assert [(e["quic_message"], e["log_level"]) for e in bridged(logged)] == [
        ("trace 1", LogLevel.debug),
        ("fatal", LogLevel.critical),
    ]
    assert not quic_logger.propagate


def test_exceptions_keep_their_traceback(quic_logger, logged):
    bridge_stdlib_logging()

    try:
        raise ValueError("bad frame")
    except ValueError:
        quic_logger.exception("handling a frame failed")

    [event] = bridged(logged)
    assert event["log_failure"].check(ValueError)
    assert event["log_level"] == LogLevel.error


def test_braces_in_messages_are_not_format_fields(quic_logger, logged):
    bridge_stdlib_logging()

    quic_logger.warning("odd {reason} text")

    assert formatEvent(bridged(logged)[0]) == "odd {reason} text"
