"""runtara's Python SDK: durable workflows on top of the instance protocol.

Two ways to use it, with the same names:

- Deferred / ``async def`` for Twisted programs: ``run_workflow``,
  ``Workflow``, ``InstanceClient`` (this package), and ``TenantConnection``
  to run many instances of one tenant over one connection;
- blocking, for plain scripts: ``runtara.sdk.blocking`` (``@workflow``,
  ``run``, ``connect``), which runs the reactor in a background thread.

Configuration comes from the environment the engine's launchers set
(``config_from_env``). See docs/sdk.md for the whole API.
"""

from runtara.model import (
    AckResult,
    CheckpointResult,
    CustomSignal,
    Event,
    EventType,
    PendingSignal,
    Registration,
    ReplayIndex,
    RetryAttempt,
    Signals,
    SignalType,
    Status,
)
from runtara.sdk.client import InstanceClient
from runtara.sdk.config import SdkConfig, config_from_env
from runtara.sdk.errors import (
    RegistrationRefused,
    RemoteError,
    RetriesExhausted,
    SdkConfigError,
    SdkError,
    SerializationError,
    ServerUnreachable,
    SessionClosed,
    SignalTimeout,
    WorkflowCancelled,
    WorkflowInterrupted,
    WorkflowPaused,
)
from runtara.sdk.results import BatchResult, Health, InstanceStatus, SleepResult
from runtara.sdk.retry import NO_RETRY, Backoff, RetryPolicy
from runtara.sdk.runner import WorkflowOutcome, execute_workflow, run_workflow
from runtara.sdk.serializers import JsonSerializer, MsgpackSerializer, Serializer
from runtara.sdk.tenant import TenantConnection
from runtara.sdk.workflow import Workflow

__all__ = [
    "NO_RETRY",
    "AckResult",
    "Backoff",
    "BatchResult",
    "CheckpointResult",
    "CustomSignal",
    "Event",
    "EventType",
    "Health",
    "InstanceClient",
    "InstanceStatus",
    "JsonSerializer",
    "MsgpackSerializer",
    "PendingSignal",
    "Registration",
    "RegistrationRefused",
    "RemoteError",
    "ReplayIndex",
    "RetriesExhausted",
    "RetryAttempt",
    "RetryPolicy",
    "SdkConfig",
    "SdkConfigError",
    "SdkError",
    "SerializationError",
    "Serializer",
    "ServerUnreachable",
    "SessionClosed",
    "SignalTimeout",
    "SignalType",
    "Signals",
    "SleepResult",
    "Status",
    "TenantConnection",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowInterrupted",
    "WorkflowOutcome",
    "WorkflowPaused",
    "config_from_env",
    "execute_workflow",
    "run_workflow",
]
