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

import functools
import inspect
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, NoReturn, ParamSpec, TypeVar, overload

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from runtara.logbridge import bridge_stdlib_logging
from runtara.model import Registration
from runtara.sdk._threads import Bridge
from runtara.sdk.client import InstanceClient
from runtara.sdk.config import SdkConfig, config_from_env
from runtara.sdk.errors import RegistrationRefused, SdkConfigError, ServerUnreachable
from runtara.sdk.retry import RetryPolicy
from runtara.sdk.runner import WorkflowOutcome, run_workflow
from runtara.sdk.serializers import Serializer
from runtara.sdk.workflow import Workflow

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

_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Blocking(Generic[_T]):
    """Blocking twins of the methods of ``target``, an object of the reactor thread.

    A subclass lists them as ``name = _blocking(TargetClass.name)``: the
    signatures and docstrings are the target's, declared there only.
    """

    def __init__(self, target: _T, bridge: Bridge) -> None:
        self._target = target
        self._bridge = bridge


@overload
def _blocking(
    method: Callable[Concatenate[Any, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_Blocking[Any], _P], _R]: ...


@overload
def _blocking(
    method: Callable[Concatenate[Any, _P], _R],
) -> Callable[Concatenate[_Blocking[Any], _P], _R]: ...


def _blocking(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of the target, as a method of its ``_Blocking`` twin.

    The call runs in the reactor thread (a coroutine to its end); its result,
    or its exception, comes back to the calling thread. The twin has the
    name, signature and docstring of ``method``, and calls the target's own
    ``method`` (a subclass's override included).
    """
    name = method.__name__

    @functools.wraps(method)
    def call(self: _Blocking[Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._bridge.run(lambda: _awaited(getattr(self._target, name)(*args, **kwargs)))

    call.__doc__ = f"Blocking ``{method.__qualname__}``.\n\n{inspect.getdoc(method) or ''}".rstrip()
    return call


class BlockingClient(_Blocking[InstanceClient]):
    """``InstanceClient`` with blocking methods; a context manager that closes it."""

    @property
    def config(self) -> SdkConfig:
        return self._target.config

    @property
    def instance_id(self) -> str:
        return self._target.instance_id

    @property
    def tenant_id(self) -> str:
        return self._target.tenant_id

    @property
    def registration(self) -> Registration | None:
        return self._target.registration

    @property
    def async_client(self) -> InstanceClient:
        """The Deferred client underneath (use it only from the reactor thread)."""
        return self._target

    register_instance = _blocking(InstanceClient.register_instance)
    checkpoint = _blocking(InstanceClient.checkpoint)
    get_checkpoint = _blocking(InstanceClient.get_checkpoint)
    sleep = _blocking(InstanceClient.sleep)
    instance_event = _blocking(InstanceClient.instance_event)
    instance_event_batch = _blocking(InstanceClient.instance_event_batch)
    get_instance_status = _blocking(InstanceClient.get_instance_status)
    poll_signals = _blocking(InstanceClient.poll_signals)
    signal_ack = _blocking(InstanceClient.signal_ack)
    retry_attempt = _blocking(InstanceClient.retry_attempt)
    health = _blocking(InstanceClient.health)
    is_new_checkpoint = _blocking(InstanceClient.is_new_checkpoint)
    last_attempt = _blocking(InstanceClient.last_attempt)
    start_heartbeats = _blocking(InstanceClient.start_heartbeats)
    stop_heartbeats = _blocking(InstanceClient.stop_heartbeats)
    close = _blocking(InstanceClient.close)

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


class BlockingWorkflow(_Blocking[Workflow]):
    """``Workflow`` with blocking methods; step functions run in the calling thread."""

    @property
    def instance_id(self) -> str:
        return self._target.instance_id

    @property
    def async_workflow(self) -> Workflow:
        """The Deferred workflow underneath (use it only from the reactor thread)."""
        return self._target

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
            lambda: self._target.step(
                name, call, *args, retry=retry, serializer=serializer, **kwargs
            )
        )

    sleep = _blocking(Workflow.sleep)
    wait_for_signal = _blocking(Workflow.wait_for_signal)
    check_signals = _blocking(Workflow.check_signals)


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


async def _awaited(value: Any) -> Any:
    """``value``, awaited when it is awaitable (for ``Bridge.run``)."""
    if inspect.isawaitable(value):
        return await value
    return value
