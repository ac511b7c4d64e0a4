"""The blocking facade: the SDK for plain Python scripts, no Twisted code needed.

A script's function becomes the workflow::

    from runtara.sdk.blocking import workflow

    @workflow
    def process_order(wf):
        order = wf.step("validate", validate_order, "order-17")
        wf.sleep(30, "cool-down")
        approval = wf.wait_for_signal("approval", timeout=3600)
        return wf.step("ship", ship, order, approval.decode())

    if __name__ == "__main__":
        process_order.main()

or, for the protocol itself::

    with connect() as client:
        client.checkpoint("step-1", b"state")

Every method has the name, arguments and result of its Deferred twin
(``InstanceClient``, ``Workflow``) but blocks and returns the result. The
global reactor runs in a daemon thread (``ReactorThread``); step functions
run in the calling thread. A program whose reactor already runs must use
the Deferred API instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from runtara.logbridge import bridge_stdlib_logging
from runtara.model import (
    AckResult,
    CheckpointResult,
    CustomSignal,
    Event,
    EventType,
    Registration,
    Signals,
    SignalType,
)
from runtara.sdk._threads import Bridge
from runtara.sdk.client import InstanceClient
from runtara.sdk.config import SdkConfig, config_from_env
from runtara.sdk.errors import RegistrationRefused, SdkConfigError, ServerUnreachable
from runtara.sdk.results import BatchResult, Health, InstanceStatus, SleepResult
from runtara.sdk.retry import RetryPolicy
from runtara.sdk.runner import WorkflowOutcome, run_workflow
from runtara.sdk.serializers import Serializer
from runtara.sdk.workflow import Duration, Workflow

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_UNAVAILABLE",
    "BlockingClient",
    "BlockingWorkflow",
    "WorkflowScript",
    "connect",
    "log_to_stderr",
    "run",
    "workflow",
]

EXIT_UNAVAILABLE = 2
"""``WorkflowScript.main``'s exit status when the workflow could not run at all:
bad configuration, server unreachable, registration refused."""

EXIT_INTERRUPTED = 130
"""``WorkflowScript.main``'s exit status after Ctrl-C (the instance stays resumable)."""

_log = Logger()


class BlockingClient:
    """``InstanceClient`` with blocking methods; a context manager that closes it."""

    def __init__(self, client: InstanceClient, bridge: Bridge) -> None:
        self._client = client
        self._bridge = bridge

    @property
    def config(self) -> SdkConfig:
        return self._client.config

    @property
    def instance_id(self) -> str:
        return self._client.instance_id

    @property
    def tenant_id(self) -> str:
        return self._client.tenant_id

    @property
    def registration(self) -> Registration | None:
        return self._client.registration

    @property
    def async_client(self) -> InstanceClient:
        """The Deferred client underneath (use it only from the reactor thread)."""
        return self._client

    def register_instance(self, checkpoint_id: str | None = None) -> Registration:
        """``InstanceClient.register_instance``, blocking."""
        return self._bridge.run(lambda: self._client.register_instance(checkpoint_id))

    def checkpoint(
        self, checkpoint_id: str, state: bytes, *, received: CustomSignal | None = None
    ) -> CheckpointResult:
        """``InstanceClient.checkpoint``, blocking."""
        return self._bridge.run(
            lambda: self._client.checkpoint(checkpoint_id, state, received=received)
        )

    def get_checkpoint(self, checkpoint_id: str, *, last_attempt: bool = False) -> CheckpointResult:
        """``InstanceClient.get_checkpoint``, blocking."""
        return self._bridge.run(
            lambda: self._client.get_checkpoint(checkpoint_id, last_attempt=last_attempt)
        )

    def sleep(self, duration_ms: int, checkpoint_id: str, state: bytes = b"") -> SleepResult:
        """``InstanceClient.sleep``, blocking."""
        return self._bridge.run(lambda: self._client.sleep(duration_ms, checkpoint_id, state))

    def instance_event(
        self,
        event_type: EventType | str,
        payload: bytes = b"",
        *,
        checkpoint_id: str | None = None,
        subtype: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """``InstanceClient.instance_event``, blocking."""
        self._bridge.run(
            lambda: self._client.instance_event(
                event_type,
                payload,
                checkpoint_id=checkpoint_id,
                subtype=subtype,
                timestamp_ms=timestamp_ms,
            )
        )

    def instance_event_batch(self, events: Sequence[Event]) -> BatchResult:
        """``InstanceClient.instance_event_batch``, blocking."""
        return self._bridge.run(lambda: self._client.instance_event_batch(events))

    def get_instance_status(self, instance_id: str | None = None) -> InstanceStatus:
        """``InstanceClient.get_instance_status``, blocking."""
        return self._bridge.run(lambda: self._client.get_instance_status(instance_id))

    def poll_signals(self, checkpoint_id: str | None = None, *, peek: bool = False) -> Signals:
        """``InstanceClient.poll_signals``, blocking."""
        return self._bridge.run(lambda: self._client.poll_signals(checkpoint_id, peek=peek))

    def signal_ack(self, signal_type: SignalType | str, acknowledged: bool = True) -> AckResult:
        """``InstanceClient.signal_ack``, blocking."""
        return self._bridge.run(lambda: self._client.signal_ack(signal_type, acknowledged))

    def retry_attempt(
        self,
        checkpoint_id: str,
        attempt_number: int,
        error_message: str | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """``InstanceClient.retry_attempt``, blocking."""
        self._bridge.run(
            lambda: self._client.retry_attempt(
                checkpoint_id, attempt_number, error_message, timestamp_ms
            )
        )

    def health(self) -> Health:
        """``InstanceClient.health``, blocking."""
        return self._bridge.run(self._client.health)

    def start_heartbeats(self) -> None:
        """``InstanceClient.start_heartbeats``, blocking."""
        self._bridge.run(_returning(self._client.start_heartbeats))

    def stop_heartbeats(self) -> None:
        """``InstanceClient.stop_heartbeats``, blocking."""
        self._bridge.run(_returning(self._client.stop_heartbeats))

    def close(self) -> None:
        """``InstanceClient.close``, blocking."""
        self._bridge.run(self._client.close)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(config: SdkConfig | None = None) -> BlockingClient:
    """Connect and register (``config`` defaults to ``config_from_env()``); the client."""
    config = config if config is not None else config_from_env()
    bridge = Bridge.shared()
    client = bridge.run(lambda: InstanceClient.connect(bridge.reactor, config))
    return BlockingClient(client, bridge)


class BlockingWorkflow:
    """``Workflow`` with blocking methods; step functions run in the calling thread."""

    def __init__(self, workflow: Workflow, bridge: Bridge) -> None:
        self._workflow = workflow
        self._bridge = bridge

    @property
    def instance_id(self) -> str:
        return self._workflow.instance_id

    @property
    def async_workflow(self) -> Workflow:
        """The Deferred workflow underneath (use it only from the reactor thread)."""
        return self._workflow

    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        serializer: Serializer | None = None,
        **kwargs: Any,
    ) -> Any:
        """See ``Workflow.step``; ``fn`` runs in this thread."""
        call = self._bridge.in_caller(fn)
        return self._bridge.run(
            lambda: self._workflow.step(
                name, call, *args, retry=retry, serializer=serializer, **kwargs
            )
        )

    def sleep(self, duration: Duration, name: str) -> SleepResult:
        """See ``Workflow.sleep``."""
        return self._bridge.run(lambda: self._workflow.sleep(duration, name))

    def wait_for_signal(self, name: str, timeout: Duration | None = None) -> bytes:
        """See ``Workflow.wait_for_signal``."""
        return self._bridge.run(lambda: self._workflow.wait_for_signal(name, timeout))

    def check_signals(self) -> None:
        """See ``Workflow.check_signals``."""
        self._bridge.run(self._workflow.check_signals)


def run(
    fn: Callable[[BlockingWorkflow], Any],
    config: SdkConfig | None = None,
    *,
    serializer: Serializer | None = None,
    retry_policy: RetryPolicy | None = None,
    signal_poll_interval: float = 1.0,
) -> WorkflowOutcome:
    """Run ``fn`` (a blocking workflow function) to its end; the outcome.

    Blocking twin of ``run_workflow``; ``fn`` runs in the calling thread.
    """
    config = config if config is not None else config_from_env()
    bridge = Bridge.shared()
    body = bridge.in_caller(fn)

    def start(workflow: Workflow) -> Any:
        return body(BlockingWorkflow(workflow, bridge))

    return bridge.run(
        lambda: run_workflow(
            bridge.reactor,
            start,
            config,
            serializer=serializer,
            retry_policy=retry_policy,
            signal_poll_interval=signal_poll_interval,
        )
    )


class WorkflowScript:
    """A blocking workflow function, made runnable by ``@workflow``.

    Calling it calls the function; ``run`` runs it as a workflow; ``main``
    runs it as a program.
    """

    def __init__(
        self,
        fn: Callable[[BlockingWorkflow], Any],
        *,
        serializer: Serializer | None = None,
        retry_policy: RetryPolicy | None = None,
        signal_poll_interval: float = 1.0,
    ) -> None:
        self.fn = fn
        self.serializer = serializer
        self.retry_policy = retry_policy
        self.signal_poll_interval = signal_poll_interval
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", type(self).__name__)

    def __call__(self, wf: BlockingWorkflow) -> Any:
        return self.fn(wf)

    def run(self, config: SdkConfig | None = None) -> WorkflowOutcome:
        """Run the workflow for the configured instance; its outcome."""
        return run(
            self.fn,
            config,
            serializer=self.serializer,
            retry_policy=self.retry_policy,
            signal_poll_interval=self.signal_poll_interval,
        )

    def main(
        self, config: SdkConfig | None = None, *, log_level: LogLevel = LogLevel.info
    ) -> NoReturn:
        """Run as a program: log to stderr, run, exit.

        Exit status: 0 completed, paused or cancelled; 1 failed; 2
        (``EXIT_UNAVAILABLE``) when it could not run (bad configuration,
        server unreachable, registration refused); 130 (``EXIT_INTERRUPTED``)
        on Ctrl-C, after which running it again resumes the instance.
        """
        log_to_stderr(log_level)
        try:
            outcome = self.run(config)
        except (SdkConfigError, RegistrationRefused, ServerUnreachable) as error:
            _log.critical("workflow cannot run: {error}", error=str(error))
            sys.exit(EXIT_UNAVAILABLE)
        except KeyboardInterrupt:
            _log.warn("interrupted: run the workflow again to resume it")
            sys.exit(EXIT_INTERRUPTED)
        _log.info(
            "workflow {instance_id} ended: {status}",
            instance_id=outcome.instance_id,
            status=outcome.status.value,
        )
        sys.exit(outcome.exit_code)


def workflow(
    fn: Callable[[BlockingWorkflow], Any] | None = None,
    *,
    serializer: Serializer | None = None,
    retry_policy: RetryPolicy | None = None,
    signal_poll_interval: float = 1.0,
) -> Any:
    """Decorator: ``@workflow`` or ``@workflow(serializer=..., retry_policy=...)``.

    Turns ``fn(wf: BlockingWorkflow) -> output`` into a ``WorkflowScript``.
    """

    def decorate(function: Callable[[BlockingWorkflow], Any]) -> WorkflowScript:
        return WorkflowScript(
            function,
            serializer=serializer,
            retry_policy=retry_policy,
            signal_poll_interval=signal_poll_interval,
        )

    return decorate(fn) if fn is not None else decorate


def log_to_stderr(level: LogLevel = LogLevel.info) -> None:
    """Send ``twisted.logger`` events (and aioquic's) of ``level`` and above to stderr."""
    bridge_stdlib_logging()
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _returning(fn: Callable[[], None]) -> Callable[[], Any]:
    """``fn`` as a coroutine function (for ``Bridge.run``)."""

    async def call() -> None:
        fn()

    return call
