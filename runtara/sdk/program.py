"""A workflow as a program: its exit status, Ctrl-C, one line for what stops it.

For a Twisted program, ``workflow_main`` under ``task.react``::

    from twisted.internet import task
    from runtara.sdk.program import workflow_main

    async def process_order(wf):
        ...

    task.react(workflow_main, [process_order])

The blocking facade's ``WorkflowScript.main`` keeps the same rules. Exit
status: 0 when the workflow completed, was paused or was cancelled; 1 when
it failed; ``EXIT_UNAVAILABLE`` (2) when it could not run (``CANNOT_RUN``:
bad configuration, server unreachable or not trusted, registration
refused), logged as one critical line; ``EXIT_INTERRUPTED`` (130) on
Ctrl-C, after which the instance stays resumable: run the program again.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from runtara.logbridge import bridge_stdlib_logging
from runtara.sdk.config import SdkConfig
from runtara.sdk.errors import (
    RegistrationRefused,
    SdkConfigError,
    ServerNotTrusted,
    ServerUnreachable,
)
from runtara.sdk.retry import RetryPolicy
from runtara.sdk.runner import WorkflowFunction, WorkflowOutcome, run_workflow
from runtara.sdk.serializers import Serializer

__all__ = [
    "CANNOT_RUN",
    "EXIT_INTERRUPTED",
    "EXIT_UNAVAILABLE",
    "log_to_stderr",
    "report_cannot_run",
    "report_interrupted",
    "report_outcome",
    "workflow_main",
]

EXIT_UNAVAILABLE = 2
"""Exit status of a workflow program that could not run at all: bad configuration,
server unreachable or not trusted, registration refused."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (the instance stays resumable)."""

CANNOT_RUN: tuple[type[Exception], ...] = (
    SdkConfigError,
    RegistrationRefused,
    ServerUnreachable,
    ServerNotTrusted,
)
"""Why a workflow program cannot run; each one's message says what to do."""

_log = Logger(namespace="runtara.sdk.program")


async def workflow_main(
    reactor: Any,
    fn: WorkflowFunction,
    config: SdkConfig | None = None,
    *,
    serializer: Serializer | None = None,
    retry_policy: RetryPolicy | None = None,
    signal_poll_interval: float = 1.0,
    log_level: LogLevel | None = LogLevel.info,
) -> NoReturn:
    """Run ``fn`` with ``run_workflow`` as a program's main; raise ``SystemExit``.

    For ``task.react``, which exits with the status of the ``SystemExit``
    (see the module docstring). When the reactor stops first (Ctrl-C), the
    run is cancelled and the reactor waits until its connection is closed.
    ``log_level`` (None: leave logging alone) starts logging to stderr.
    """
    if log_level is not None:
        log_to_stderr(log_level)
    running = Deferred.fromCoroutine(
        run_workflow(
            reactor,
            fn,
            config,
            serializer=serializer,
            retry_policy=retry_policy,
            signal_poll_interval=signal_poll_interval,
        )
    )
    ended: Deferred[None] = Deferred()
    stopping = interrupted = False

    def interrupt() -> Deferred[None] | None:
        nonlocal stopping, interrupted
        stopping = True
        if running.called:
            return None
        interrupted = True
        running.cancel()
        return ended

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupt)
    try:
        outcome: WorkflowOutcome = await running
    except CancelledError:
        if not interrupted:
            raise
        report_interrupted()
        raise SystemExit(EXIT_INTERRUPTED) from None
    except CANNOT_RUN as error:
        report_cannot_run(error)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    finally:
        if not stopping:
            reactor.removeSystemEventTrigger(trigger)
        ended.callback(None)
    report_outcome(outcome)
    raise SystemExit(outcome.exit_code)


def report_cannot_run(error: Exception) -> None:
    """Log why the workflow cannot run, as one critical line."""
    _log.critical("workflow cannot run: {error}", error=str(error))


def report_interrupted() -> None:
    _log.warn("interrupted: run the workflow again to resume it")


def report_outcome(outcome: WorkflowOutcome) -> None:
    _log.info(
        "workflow {instance_id} ended: {status}",
        instance_id=outcome.instance_id,
        status=outcome.status.value,
    )


def log_to_stderr(level: LogLevel = LogLevel.info) -> None:
    """Send ``twisted.logger`` events of ``level`` and above to stderr.

    Twisted's own events (ports opened and closed, the reactor stopping)
    show from ``warn`` up, aioquic's from ``error`` up: the SDK reports what
    they would say (a lost connection, a rejected certificate) in its own
    words, and a workflow's log keeps to what the workflow does.
    """
    bridge_stdlib_logging(logging.ERROR)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    for namespace in _FRAMEWORK_NAMESPACES:
        predicate.setLogLevelForNamespace(namespace, _higher(level, LogLevel.warn))
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


_FRAMEWORK_NAMESPACES = ("twisted", "log_legacy")
"""Twisted's loggers, and the one of ``twisted.python.log.msg`` (Twisted's ports use it)."""


def _higher(first: LogLevel, second: LogLevel) -> LogLevel:
    levels = list(LogLevel.iterconstants())
    return max(first, second, key=levels.index)
