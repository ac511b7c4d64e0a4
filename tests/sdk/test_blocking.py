"""The blocking facade's guards (its behaviour is tested through subprocesses:
tests/sdk/workflows/scripted.py and client_ops.py, since its reactor thread
cannot run inside a pytest-twisted process)."""

from __future__ import annotations

import inspect

import pytest
import pytest_twisted

from runtara.sdk import InstanceClient, Workflow
from runtara.sdk.blocking import (
    BlockingClient,
    BlockingWorkflow,
    WorkflowScript,
    connect,
    workflow,
)


@pytest_twisted.ensureDeferred
async def test_it_refuses_to_start_a_second_reactor():
    from runtara.sdk.config import SdkConfig

    with pytest.raises(RuntimeError, match="use the Deferred API"):
        connect(SdkConfig(instance_id="i-1", tenant_id="t"))


def test_the_decorator_keeps_the_function_callable():
    @workflow(signal_poll_interval=0.5)
    def flow(wf):
        """Doubles."""
        return wf * 2

    assert isinstance(flow, WorkflowScript)
    assert flow(21) == 42
    assert flow.__name__ == "flow" and flow.__doc__ == "Doubles."
    assert flow.signal_poll_interval == 0.5
    assert isinstance(workflow(lambda wf: None), WorkflowScript)


@pytest.mark.parametrize(
    ("blocking", "deferred"), [(BlockingClient, InstanceClient), (BlockingWorkflow, Workflow)]
)
def test_every_method_has_a_blocking_twin_with_its_signature(blocking, deferred):
    methods = [
        name
        for name, _ in inspect.getmembers(deferred, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert methods
    for name in methods:
        assert inspect.signature(getattr(blocking, name)) == inspect.signature(
            getattr(deferred, name)
        ), name
