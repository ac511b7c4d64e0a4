"""PROTOCOL.md section 8, walked through the dispatcher on a fake clock.

Time (sleeps, timestamps) comes from a ``task.Clock``; the database is a real
SQLite file. Sleeps wake exactly when the clock says so, without waiting.
"""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from runtara import codec
from runtara.dispatch import Dispatcher
from runtara.model import SignalType
from runtara.operations import OperationContext
from runtara.session import Admission, Session
from runtara.sleeper import Sleeper

EPOCH_S = 1_700_000_000


class Harness:
    def __init__(self, persistence, clock):
        self.persistence = persistence
        self.clock = clock
        self.admission = Admission(8)
        self.dispatcher = Dispatcher(
            OperationContext(
                persistence=persistence,
                clock=clock,
                admission=self.admission,
                sleeper=Sleeper(clock),
                auth_tokens={},
                started_at=clock.seconds(),
            )
        )
        self.session = Session(("127.0.0.1", 1), close=lambda reason: None)

    def send(self, operation, **fields):
        """The Deferred of the decoded response map."""
        body = codec.encode({operation: fields})
        return self.dispatcher.dispatch(self.session, body).addCallback(codec.decode)

    async def call(self, operation, **fields):
        response = await self.send(operation, **fields)
        assert operation in response, response
        return response[operation]

    async def status(self, instance_id):
        return (await self.call("get_instance_status", instance_id=instance_id))["status"]


@pytest_twisted.async_yield_fixture
async def harness(tmp_path):
    from twisted.internet import reactor

    from runtara.persistence.sqlite import SQLitePersistence

    clock = Clock()
    clock.advance(EPOCH_S)
    persistence = SQLitePersistence(str(tmp_path / "runtara.db"), clock, reactor=reactor)
    await persistence.start()
    await persistence.migrate()
    yield Harness(persistence, clock)
    await persistence.close()


@pytest_twisted.ensureDeferred
async def test_a_sleep_wakes_exactly_when_the_clock_reaches_its_deadline(harness):
    await harness.call("register_instance", instance_id="i", tenant_id="t")
    sleeping = harness.send(
        "sleep", instance_id="i", checkpoint_id="nap", duration_ms=5000, state=b""
    )
    for _ in range(500):
        if await harness.status("i") == "suspended" and harness.clock.getDelayedCalls():
            break
    else:
        pytest.fail("the sleep never started")
    assert len(harness.admission) == 0, "a sleeper does not count against the limit"
    harness.clock.advance(4.999)
    assert not sleeping.called
    harness.clock.advance(0.001)
    answer = (await sleeping)["sleep"]
    assert answer == {"slept_ms": 5000, "wake_at_ms": EPOCH_S * 1000 + 5000}
    assert await harness.status("i") == "running"
    assert harness.admission.is_counted("i")


@pytest_twisted.ensureDeferred
async def test_pause_resume_and_cancel_follow_the_status_machine(harness):
    await harness.call("register_instance", instance_id="i", tenant_id="t")
    await harness.persistence.send_signal("i", SignalType.PAUSE, b"")
    assert await harness.call(
        "signal_ack", instance_id="i", signal_type="pause", acknowledged=True
    ) == {"success": True, "status": "suspended"}
    assert not harness.admission.is_counted("i")
    await harness.persistence.send_signal("i", SignalType.RESUME, b"")
    assert (
        await harness.call("signal_ack", instance_id="i", signal_type="resume", acknowledged=True)
    )["status"] == "running"
    await harness.call("instance_event", instance_id="i", event_type="suspended")
    assert await harness.status("i") == "suspended"
    assert (await harness.call("register_instance", instance_id="i", tenant_id="t"))[
        "status"
    ] == "running"
    await harness.persistence.send_signal("i", SignalType.CANCEL, b"")
    assert (
        await harness.call("signal_ack", instance_id="i", signal_type="cancel", acknowledged=True)
    )["status"] == "cancelled"
    record = await harness.persistence.get_instance_status("i", "t")
    assert record.finished_at_ms == EPOCH_S * 1000


@pytest.mark.parametrize("event_type, status", [("completed", "completed"), ("failed", "failed")])
@pytest_twisted.ensureDeferred
async def test_terminal_statuses_never_change_again(harness, event_type, status):
    await harness.call("register_instance", instance_id="i", tenant_id="t")
    harness.clock.advance(2.5)
    await harness.call("instance_event", instance_id="i", event_type=event_type, payload=b"x")
    record = await harness.persistence.get_instance_status("i", "t")
    assert (record.status, record.finished_at_ms) == (status, EPOCH_S * 1000 + 2500)
    refused = await harness.send("instance_event", instance_id="i", event_type="suspended")
    assert refused["error"]["kind"] == "INVALID_INSTANCE_STATE"
    again = await harness.call("register_instance", instance_id="i", tenant_id="t")
    assert (again["success"], again["status"]) == (False, status)
    assert await harness.status("i") == status


async def _answered(harness, deferred):
    """Whether ``deferred`` fires while the database serves a few hundred more calls
    (the clock stands still: a call held by a timer never fires)."""
    for _ in range(300):
        if deferred.called:
            return True
        await harness.status("i")
    return deferred.called


@pytest_twisted.ensureDeferred
async def test_replaying_a_finished_sleep_while_a_later_one_is_pending_answers_at_once(harness):
    await harness.call("register_instance", instance_id="i", tenant_id="t")
    first = harness.send(
        "sleep", instance_id="i", checkpoint_id="first", duration_ms=200, state=b""
    )
    assert await _answered(harness, first) is False
    harness.clock.advance(0.2)
    assert (await first)["sleep"]["slept_ms"] == 200
    second = harness.send(
        "sleep", instance_id="i", checkpoint_id="second", duration_ms=10_000, state=b""
    )
    assert await _answered(harness, second) is False
    # The workflow process dies and a new one replays from the start.
    await harness.call("register_instance", instance_id="i", tenant_id="t")

    replay = harness.send(
        "sleep", instance_id="i", checkpoint_id="first", duration_ms=200, state=b""
    )

    assert await _answered(harness, replay), "the replay waited for the later sleep's deadline"
    assert (await replay)["sleep"] == {"slept_ms": 0, "wake_at_ms": EPOCH_S * 1000 + 200}
