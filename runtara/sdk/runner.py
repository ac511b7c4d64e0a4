"""Running a workflow function to its end, and reporting how it ended.

``run_workflow`` connects (configuration from the environment by default),
runs the function with a ``Workflow``, and reports the end to the server:

- it returned: ``completed`` with the serialized return value as output;
- it raised: ``failed`` with ``Type: message`` as the error;
- a cancel was acknowledged: nothing more to report (``cancelled``);
- a pause was acknowledged: ``suspended`` was reported; run it again to resume.

::

    from twisted.internet import task
    from runtara.sdk import run_workflow

    async def greet(workflow):
        return await workflow.step("greet", lambda: "hello")

    task.react(lambda reactor: run_workflow(reactor, greet))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from runtara.model import EventType, Status
from runtara.sdk.client import InstanceClient
from runtara.sdk.config import SdkConfig
from runtara.sdk.errors import (
    RegistrationRefused,
    SerializationError,
    ServerUnreachable,
    SessionClosed,
    WorkflowInterrupted,
)
from runtara.sdk.retry import RetryPolicy
from runtara.sdk.serializers import Serializer
from runtara.sdk.workflow import Workflow, describe_error

__all__ = ["WorkflowFunction", "WorkflowOutcome", "execute_workflow", "run_workflow"]

WorkflowFunction = Callable[[Workflow], Any]
"""A workflow: takes a ``Workflow``; returns its output (a value, a Deferred or a coroutine)."""

_NOT_THE_WORKFLOWS_FAULT = (ServerUnreachable, RegistrationRefused, SessionClosed)
"""Errors of the connection, not of the workflow: raised as they are, never reported as
``failed``, so that running the workflow again resumes the instance."""

_log = Logger()


@dataclass(frozen=True)
class WorkflowOutcome:
    """How one run of a workflow ended.

    ``status`` is ``completed``, ``failed``, ``cancelled`` or ``suspended``
    (paused); ``output`` is the return value (completed), ``error`` the
    reported failure text (failed).
    """

    instance_id: str
    status: Status
    output: Any = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """A process exit status for this outcome: 1 when failed, else 0."""
        return 1 if self.status is Status.FAILED else 0


async def run_workflow(
    reactor: Any,
    fn: WorkflowFunction,
    config: SdkConfig | None = None,
    *,
    serializer: Serializer | None = None,
    retry_policy: RetryPolicy | None = None,
    signal_poll_interval: float = 1.0,
) -> WorkflowOutcome:
    """Connect, run ``fn`` to its end, report the end, close; the outcome.

    The outcome is returned once its report was answered (committed), and
    without waiting for the connection's closing period: the close goes out
    at once and the rest of it runs in the background (``_close_behind``).
    ``config`` defaults to ``config_from_env()``. Raises
    ``RegistrationRefused`` when the instance cannot run (already
    completed, failed or cancelled) and ``ServerUnreachable`` when the
    server stays out of reach, also when the workflow was under way: such
    errors are the connection's, not the workflow's, so they are not
    reported as ``failed`` and running the workflow again resumes it.
    """
    client = await InstanceClient.connect(reactor, config)
    try:
        return await execute_workflow(
            client,
            reactor,
            fn,
            serializer=serializer,
            retry_policy=retry_policy,
            signal_poll_interval=signal_poll_interval,
        )
    finally:
        _close_behind(client)


def _close_behind(client: InstanceClient) -> None:
    """Close ``client`` without waiting for the end of the connection's closing period.

    QUIC keeps a closed connection for about three probe timeouts (~90 ms
    on loopback) to absorb the peer's late packets; waiting for that would
    be most of a short workflow's run. The CONNECTION_CLOSE itself is on the
    wire before this returns, so the server releases the connection at
    once; the closing period then ends on the reactor, cancelling its timer
    and releasing the UDP port. A program that stops its reactor first
    (``task.react`` returning, the blocking facade at exit) cuts only that
    wait.
    """
    instance_id = client.instance_id
    closing = ensureDeferred(client.close())
    closing.addErrback(
        lambda failure: _log.failure(
            "closing the connection of {instance_id} failed", failure, instance_id=instance_id
        )
    )


async def execute_workflow(
    client: InstanceClient,
    clock: IReactorTime,
    fn: WorkflowFunction,
    *,
    serializer: Serializer | None = None,
    retry_policy: RetryPolicy | None = None,
    signal_poll_interval: float = 1.0,
) -> WorkflowOutcome:
    """Run ``fn`` with heartbeats on an already connected ``client`` and report its end."""
    workflow = Workflow(
        client,
        clock,
        serializer=serializer,
        retry_policy=retry_policy,
        signal_poll_interval=signal_poll_interval,
    )
    client.start_heartbeats()
    try:
        return await _execute(client, workflow, fn)
    finally:
        client.stop_heartbeats()


async def _execute(
    client: InstanceClient, workflow: Workflow, fn: WorkflowFunction
) -> WorkflowOutcome:
    instance_id = workflow.instance_id
    try:
        output = fn(workflow)
        if inspect.isawaitable(output):
            output = await output
    except WorkflowInterrupted as interruption:
        return WorkflowOutcome(instance_id, interruption.status)
    except _NOT_THE_WORKFLOWS_FAULT:
        raise
    except Exception as error:
        if workflow.interrupted is not None:
            return WorkflowOutcome(instance_id, workflow.interrupted.status)
        _log.failure("workflow {instance_id} failed", instance_id=instance_id)
        return await _fail(client, instance_id, describe_error(error))
    if workflow.interrupted is not None:
        return WorkflowOutcome(instance_id, workflow.interrupted.status)
    try:
        payload = workflow.serializer.encode(output)
    except SerializationError as error:
        return await _fail(client, instance_id, f"the output cannot be serialized: {error}")
    await _report(client, EventType.COMPLETED, payload, Status.COMPLETED)
    _log.info("workflow {instance_id} completed", instance_id=instance_id)
    return WorkflowOutcome(instance_id, Status.COMPLETED, output=output)


async def _fail(client: InstanceClient, instance_id: str, message: str) -> WorkflowOutcome:
    await _report(client, EventType.FAILED, message.encode("utf-8"), Status.FAILED)
    return WorkflowOutcome(instance_id, Status.FAILED, error=message)


async def _report(
    client: InstanceClient, event_type: EventType, payload: bytes, expected: Status
) -> None:
    """Report the end; a refusal saying the instance already ended so counts as delivered.

    (The report landed, its answer was lost with the connection, and the
    re-registration before the retry was refused because of that very report.)
    """
    try:
        await client.instance_event(event_type, payload)
    except RegistrationRefused as refusal:
        if refusal.status is not expected:
            raise
