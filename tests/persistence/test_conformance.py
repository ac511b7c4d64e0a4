"""The IPersistence conformance suite: every provider must pass all of it.

Each test runs once per engine of the registry in ``conftest.py`` on a fresh,
migrated database, with a ``task.Clock`` starting at ``EPOCH_MS``. Rules come
from the docstrings of ``runtara.interfaces.IPersistence`` and PROTOCOL.md
sections 6 to 8.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from runtara.errors import (
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidInstanceState,
)
from runtara.interfaces import IPersistence
from runtara.model import (
    AckResult,
    CheckpointInfo,
    CheckpointResult,
    CustomSignal,
    Event,
    EventRecord,
    EventType,
    InstanceDetails,
    InstanceRecord,
    PendingSignal,
    Registration,
    ReplayIndex,
    RetryAttempt,
    Signals,
    SignalType,
    SleepPlan,
    Status,
)
from runtara.persistence import store
from runtara.persistence.migrations import load_migrations
from tests.persistence.support import EPOCH_MS, FreshDatabase

TENANT = "tenant-a"
OTHER_TENANT = "tenant-b"
ID = "instance-1"

CHILD_TABLES = ("checkpoints", "events", "signals", "custom_signals", "retry_attempts")


# -- helpers -----------------------------------------------------------------


async def register(
    persistence: IPersistence,
    instance_id: str = ID,
    tenant_id: str = TENANT,
    checkpoint_id: str | None = None,
) -> Registration:
    return await persistence.register_instance(instance_id, tenant_id, checkpoint_id)


async def running(persistence: IPersistence, instance_id: str = ID) -> None:
    """Register ``instance_id`` for TENANT and check that it runs."""
    registration = await register(persistence, instance_id)
    assert registration.success, registration.error


async def report(persistence: IPersistence, instance_id: str, tenant_id: str, event: Event) -> None:
    await persistence.record_event(instance_id, tenant_id, event)


async def status_of(persistence: IPersistence, instance_id: str = ID) -> InstanceRecord:
    record = await persistence.get_instance_status(instance_id, TENANT)
    assert record is not None
    return record


async def events_of(persistence: IPersistence, instance_id: str = ID) -> list[EventRecord]:
    """Every event of the instance, oldest first."""
    newest_first = await persistence.list_events(instance_id, None, None, 1000, 0)
    return list(reversed(newest_first))


async def make_terminal(persistence: IPersistence, status: Status, instance_id: str = ID) -> None:
    """Drive a running instance into the terminal ``status``."""
    if status is Status.COMPLETED:
        await report(persistence, instance_id, TENANT, Event(EventType.COMPLETED, b"out"))
    elif status is Status.FAILED:
        await report(persistence, instance_id, TENANT, Event(EventType.FAILED, b"boom"))
    else:
        await persistence.send_signal(instance_id, SignalType.CANCEL, b"")
        await persistence.acknowledge_signal(instance_id, TENANT, SignalType.CANCEL, True)
    assert (await status_of(persistence, instance_id)).status is status


async def count_rows(database: FreshDatabase, table: str, instance_id: str = ID) -> int:
    rows = await database.execute(
        f"SELECT COUNT(*) FROM {table} WHERE instance_id = '{instance_id}'"
    )
    return int(rows[0][0])


TERMINAL = [Status.COMPLETED, Status.FAILED, Status.CANCELLED]


# -- the provider itself -------------------------------------------------------


def test_provides_ipersistence(persistence: IPersistence) -> None:
    assert verifyObject(IPersistence, persistence)


@pytest_twisted.ensureDeferred
async def test_check_health_is_true_on_an_open_database(persistence: IPersistence) -> None:
    assert await persistence.check_health() is True


@pytest_twisted.ensureDeferred
async def test_check_health_is_false_after_close(persistence: IPersistence) -> None:
    await persistence.close()

    assert await persistence.check_health() is False


@pytest_twisted.ensureDeferred
async def test_close_twice_is_harmless(persistence: IPersistence) -> None:
    await persistence.close()

    assert await persistence.close() is None


@pytest_twisted.ensureDeferred
async def test_schema_version_is_the_latest_migration(
    persistence: IPersistence, database: FreshDatabase
) -> None:
    latest = load_migrations(database.dialect)[-1].version

    assert await persistence.schema_version() == latest


# -- register_instance (6.1) ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_register_creates_an_unknown_instance_running(persistence: IPersistence) -> None:
    registration = await register(persistence)

    assert registration == Registration(success=True, status=Status.RUNNING, resumed=False)
    assert await persistence.get_instance_status(ID, TENANT) == InstanceRecord(
        instance_id=ID,
        tenant_id=TENANT,
        status=Status.RUNNING,
        checkpoint_id=None,
        created_at_ms=EPOCH_MS,
        started_at_ms=EPOCH_MS,
        finished_at_ms=None,
        sleep_until_ms=None,
        output=None,
        error=None,
    )


@pytest_twisted.ensureDeferred
async def test_register_writes_a_started_event(persistence: IPersistence) -> None:
    await register(persistence)

    [started] = await events_of(persistence)
    assert started.event_type is EventType.STARTED
    assert started.instance_id == ID
    assert started.checkpoint_id is None
    assert started.payload == b""
    assert started.created_at_ms == EPOCH_MS


@pytest_twisted.ensureDeferred
async def test_register_unknown_instance_with_checkpoint_is_refused_and_writes_nothing(
    persistence: IPersistence,
) -> None:
    registration = await register(persistence, checkpoint_id="step-3")

    assert registration == Registration(
        success=False,
        status=Status.UNKNOWN,
        resumed=False,
        error=f"Checkpoint 'step-3' not found for instance '{ID}'",
    )
    assert await persistence.get_instance_status(ID, TENANT) is None
    assert await persistence.count_instances(None, None) == 0


@pytest_twisted.ensureDeferred
async def test_register_another_tenants_instance_is_refused_as_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)

    registration = await register(persistence, tenant_id=OTHER_TENANT)

    assert registration == Registration(
        success=False, status=Status.UNKNOWN, error=f"Instance '{ID}' not found"
    )
    assert (await status_of(persistence)).tenant_id == TENANT
    assert len(await events_of(persistence)) == 1


@pytest_twisted.ensureDeferred
async def test_register_a_pending_instance_starts_it(persistence: IPersistence, clock: Any) -> None:
    await persistence.create_instance(ID, TENANT)
    clock.advance(5)

    registration = await register(persistence)

    assert registration == Registration(success=True, status=Status.RUNNING, resumed=False)
    record = await status_of(persistence)
    assert record.status is Status.RUNNING
    assert record.created_at_ms == EPOCH_MS
    assert record.started_at_ms == EPOCH_MS + 5000


@pytest_twisted.ensureDeferred
async def test_register_a_running_instance_again_is_a_crash_restart(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"s1")
    clock.advance(7)

    registration = await register(persistence, checkpoint_id="step-1")

    assert registration == Registration(success=True, status=Status.RUNNING, resumed=True)
    assert (await status_of(persistence)).started_at_ms == EPOCH_MS + 7000
    restarted = (await events_of(persistence))[-1]
    assert restarted.event_type is EventType.STARTED
    assert restarted.checkpoint_id == "step-1"
    assert restarted.created_at_ms == EPOCH_MS + 7000


@pytest_twisted.ensureDeferred
async def test_register_without_checkpoints_is_not_resumed(persistence: IPersistence) -> None:
    await running(persistence)

    registration = await register(persistence)

    assert registration == Registration(success=True, status=Status.RUNNING, resumed=False)


@pytest_twisted.ensureDeferred
async def test_register_wakes_a_suspended_instance_and_keeps_sleep_until(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"zz", 60_000)
    clock.advance(10)

    registration = await register(persistence, checkpoint_id="nap")

    assert registration == Registration(success=True, status=Status.RUNNING, resumed=True)
    record = await status_of(persistence)
    assert record.status is Status.RUNNING
    assert record.sleep_until_ms == EPOCH_MS + 60_000
    assert record.started_at_ms == EPOCH_MS + 10_000
    woke = (await events_of(persistence))[-1]
    assert (woke.event_type, woke.checkpoint_id) == (EventType.STARTED, "nap")


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest_twisted.ensureDeferred
async def test_register_a_terminal_instance_is_refused(
    persistence: IPersistence, terminal: Status
) -> None:
    await running(persistence)
    await make_terminal(persistence, terminal)
    events_before = await events_of(persistence)

    registration = await register(persistence)

    assert registration == Registration(
        success=False,
        status=terminal,
        error=f"Instance '{ID}' is already {terminal.value}",
    )
    assert (await status_of(persistence)).status is terminal
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_register_known_instance_with_unknown_checkpoint_is_refused(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 1000)
    before = await status_of(persistence)
    clock.advance(1)

    registration = await register(persistence, checkpoint_id="missing")

    assert registration == Registration(
        success=False,
        status=Status.SUSPENDED,
        error=f"Checkpoint 'missing' not found for instance '{ID}'",
    )
    assert await status_of(persistence) == before
    assert [event.event_type for event in await events_of(persistence)] == [
        EventType.STARTED,
        EventType.SLEEP,
    ]


@pytest_twisted.ensureDeferred
async def test_a_repeated_registration_of_one_run_writes_nothing_new(
    persistence: IPersistence, clock: Any
) -> None:
    first = await persistence.register_instance(ID, TENANT, None, run_id="run-1")
    clock.advance(3)

    again = await persistence.register_instance(ID, TENANT, None, run_id="run-1")

    assert again == first == Registration(success=True, status=Status.RUNNING, resumed=False)
    assert [event.event_type for event in await events_of(persistence)] == [EventType.STARTED]
    assert (await status_of(persistence)).started_at_ms == EPOCH_MS


@pytest_twisted.ensureDeferred
async def test_a_repeated_registration_of_one_run_sets_a_sleeper_running(
    persistence: IPersistence, clock: Any
) -> None:
    await persistence.register_instance(ID, TENANT, None, run_id="run-1")
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 60_000)
    clock.advance(10)

    again = await persistence.register_instance(ID, TENANT, None, run_id="run-1")

    assert again == Registration(success=True, status=Status.RUNNING, resumed=True)
    record = await status_of(persistence)
    assert (record.status, record.sleep_until_ms) == (Status.RUNNING, EPOCH_MS + 60_000)
    assert [event.event_type for event in await events_of(persistence)] == [
        EventType.STARTED,
        EventType.SLEEP,
    ]


@pytest_twisted.ensureDeferred
async def test_every_other_run_and_every_registration_without_a_run_is_a_start(
    persistence: IPersistence, clock: Any
) -> None:
    await persistence.register_instance(ID, TENANT, None, run_id="run-1")
    for run_id in ("run-2", None, None, "run-2"):
        clock.advance(1)
        await persistence.register_instance(ID, TENANT, None, run_id=run_id)

    started = [event for event in await events_of(persistence)]
    assert [event.created_at_ms for event in started] == [
        EPOCH_MS + offset for offset in (0, 1000, 2000, 3000, 4000)
    ]
    assert {event.event_type for event in started} == {EventType.STARTED}
    assert (await status_of(persistence)).started_at_ms == EPOCH_MS + 4000


async def fail_attempts(
    persistence: IPersistence, checkpoint_id: str, *attempts: tuple[int, str | None]
) -> None:
    for attempt_number, error_message in attempts:
        await persistence.record_retry_attempt(
            ID, TENANT, checkpoint_id, attempt_number, None, error_message
        )


@pytest_twisted.ensureDeferred
async def test_a_registration_asked_for_it_carries_the_replay_index(
    persistence: IPersistence,
) -> None:
    fresh = await persistence.register_instance(ID, TENANT, None, replay_index=True)
    await persistence.save_checkpoint(ID, TENANT, "a", b"")
    await persistence.save_checkpoint(ID, TENANT, "b", b"")
    await fail_attempts(persistence, "a", (1, "first try of a"))
    await fail_attempts(persistence, "c", (1, "c once"), (2, "c twice"))
    await fail_attempts(persistence, "d", (1, None))

    resumed = await persistence.register_instance(ID, TENANT, None, replay_index=True)

    assert fresh.replay_index == ReplayIndex(frozenset(), {})
    assert resumed.resumed is True
    assert resumed.replay_index == ReplayIndex(
        checkpoint_ids=frozenset({"a", "b"}),
        retry_attempts={"c": RetryAttempt(2, "c twice"), "d": RetryAttempt(1, None)},
    )


@pytest_twisted.ensureDeferred
async def test_a_registration_has_no_replay_index_unless_asked_or_when_refused(
    persistence: IPersistence,
) -> None:
    plain = await register(persistence)
    refused = await persistence.register_instance(ID, OTHER_TENANT, None, replay_index=True)

    assert plain.replay_index is None
    assert refused.success is False and refused.replay_index is None


@pytest_twisted.ensureDeferred
async def test_the_replay_index_is_left_out_beyond_its_limit(
    persistence: IPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "MAX_REPLAY_INDEX", 2)
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "a", b"")
    await persistence.save_checkpoint(ID, TENANT, "b", b"")
    await fail_attempts(persistence, "c", (1, None))
    await fail_attempts(persistence, "d", (1, None))
    at_the_limit = await persistence.register_instance(ID, TENANT, None, replay_index=True)
    await fail_attempts(persistence, "e", (1, None))
    too_many_retries = await persistence.register_instance(ID, TENANT, None, replay_index=True)
    await persistence.save_checkpoint(ID, TENANT, "e", b"")
    too_many_checkpoints = await persistence.register_instance(ID, TENANT, None, replay_index=True)

    assert at_the_limit.replay_index is not None
    assert at_the_limit.replay_index.checkpoint_ids == {"a", "b"}
    assert too_many_retries.replay_index is None
    assert too_many_checkpoints.success and too_many_checkpoints.replay_index is None


# -- save_checkpoint (6.2) -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_first_checkpoint_is_stored_and_becomes_current(persistence: IPersistence) -> None:
    await running(persistence)

    result = await persistence.save_checkpoint(ID, TENANT, "step-1", b"first")

    assert result == CheckpointResult(found=False, state=b"")
    assert (await status_of(persistence)).checkpoint_id == "step-1"
    assert await persistence.get_checkpoint(ID, TENANT, "step-1") == b"first"


@pytest_twisted.ensureDeferred
async def test_later_checkpoint_returns_the_first_state_and_stores_nothing(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"first")
    await persistence.save_checkpoint(ID, TENANT, "step-2", b"second")

    result = await persistence.save_checkpoint(ID, TENANT, "step-1", b"changed")

    assert result == CheckpointResult(found=True, state=b"first")
    assert await persistence.get_checkpoint(ID, TENANT, "step-1") == b"first"
    assert (await status_of(persistence)).checkpoint_id == "step-2"


@pytest_twisted.ensureDeferred
async def test_concurrent_first_checkpoints_store_exactly_one_state(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    states = [f"state-{n}".encode() for n in range(20)]

    results = await defer.gatherResults(
        [persistence.save_checkpoint(ID, TENANT, "step-1", state) for state in states]
    )

    stored = await persistence.get_checkpoint(ID, TENANT, "step-1")
    assert stored in states
    assert [result.found for result in results].count(False) == 1
    assert all(result.state == stored for result in results if result.found)
    assert len(await persistence.list_checkpoints(ID, 100, 0)) == 1


@pytest.mark.parametrize(
    "state",
    [b"", bytes(range(256)), bytes(range(256)) * 4096],
    ids=["empty", "all-byte-values", "one-mebibyte"],
)
@pytest_twisted.ensureDeferred
async def test_checkpoint_state_round_trips_exactly(
    persistence: IPersistence, state: bytes
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", state)

    replayed = await persistence.save_checkpoint(ID, TENANT, "step-1", b"other")
    read = await persistence.get_checkpoint(ID, TENANT, "step-1")

    assert type(replayed.state) is bytes and replayed.state == state
    assert type(read) is bytes and read == state
    [info] = await persistence.list_checkpoints(ID, 10, 0)
    assert info.size_bytes == len(state)


@pytest_twisted.ensureDeferred
async def test_checkpoint_reports_the_pending_signal_until_acknowledged(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.RESUME, b"go on")
    signal = PendingSignal(SignalType.RESUME, b"go on")

    first = await persistence.save_checkpoint(ID, TENANT, "step-1", b"")
    again = await persistence.save_checkpoint(ID, TENANT, "step-1", b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.RESUME, True)
    after_ack = await persistence.save_checkpoint(ID, TENANT, "step-2", b"")

    assert first.pending_signal == signal
    assert again.pending_signal == signal
    assert after_ack.pending_signal is None


@pytest_twisted.ensureDeferred
async def test_checkpoint_consumes_the_custom_signal_of_its_own_checkpoint_only(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "step-2", b"for step 2")

    other = await persistence.save_checkpoint(ID, TENANT, "step-1", b"")
    own = await persistence.save_checkpoint(ID, TENANT, "step-2", b"")
    replay = await persistence.save_checkpoint(ID, TENANT, "step-2", b"")

    assert other.custom_signal is None
    assert own.custom_signal == CustomSignal("step-2", b"for step 2")
    assert replay.custom_signal is None
    assert (await persistence.poll_signals(ID, TENANT, "step-2")).custom_signal is None


@pytest_twisted.ensureDeferred
async def test_checkpoint_replay_delivers_a_custom_signal_sent_after_the_first_save(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"s")
    await persistence.send_custom_signal(ID, "step-1", b"late")

    replay = await persistence.save_checkpoint(ID, TENANT, "step-1", b"s")

    assert replay == CheckpointResult(
        found=True, state=b"s", custom_signal=CustomSignal("step-1", b"late")
    )


@pytest.mark.parametrize("status", [Status.PENDING, Status.SUSPENDED, *TERMINAL])
@pytest_twisted.ensureDeferred
async def test_checkpoint_on_an_instance_not_running_is_refused(
    persistence: IPersistence, status: Status
) -> None:
    if status is Status.PENDING:
        await persistence.create_instance(ID, TENANT)
    else:
        await running(persistence)
    if status is Status.SUSPENDED:
        await report(persistence, ID, TENANT, Event(EventType.SUSPENDED))
    elif status.is_terminal:
        await make_terminal(persistence, status)

    with pytest.raises(InvalidInstanceState) as refused:
        await persistence.save_checkpoint(ID, TENANT, "step-1", b"x")

    assert refused.value.message == (
        f"Instance '{ID}' is in invalid state: expected 'running', got '{status.value}'"
    )
    assert await persistence.get_checkpoint(ID, TENANT, "step-1") is None


@pytest_twisted.ensureDeferred
async def test_checkpoint_on_an_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)

    with pytest.raises(InstanceNotFound) as foreign:
        await persistence.save_checkpoint(ID, OTHER_TENANT, "step-1", b"")
    with pytest.raises(InstanceNotFound) as unknown:
        await persistence.save_checkpoint("nobody", TENANT, "step-1", b"")

    assert foreign.value.message == f"Instance '{ID}' not found"
    assert unknown.value.message == "Instance 'nobody' not found"
    assert await persistence.get_checkpoint(ID, TENANT, "step-1") is None


# -- get_checkpoint (6.3) ------------------------------------------------------


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest_twisted.ensureDeferred
async def test_get_checkpoint_reads_in_any_status(
    persistence: IPersistence, terminal: Status
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"kept")
    await make_terminal(persistence, terminal)

    assert await persistence.get_checkpoint(ID, TENANT, "step-1") == b"kept"


@pytest_twisted.ensureDeferred
async def test_get_checkpoint_of_a_missing_checkpoint_is_none(persistence: IPersistence) -> None:
    await running(persistence)

    assert await persistence.get_checkpoint(ID, TENANT, "never") is None


@pytest_twisted.ensureDeferred
async def test_get_checkpoint_with_no_tenant_sees_every_tenant(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"any")

    assert await persistence.get_checkpoint(ID, None, "step-1") == b"any"


@pytest_twisted.ensureDeferred
async def test_get_checkpoint_of_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"secret")

    with pytest.raises(InstanceNotFound):
        await persistence.get_checkpoint(ID, OTHER_TENANT, "step-1")
    with pytest.raises(InstanceNotFound):
        await persistence.get_checkpoint("nobody", None, "step-1")


@pytest_twisted.ensureDeferred
async def test_replay_checkpoint_reports_the_state_and_the_last_failed_attempt(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await fail_attempts(persistence, "flaky", (1, "one"), (2, "two"))
    await persistence.save_checkpoint(ID, TENANT, "flaky", b"at last")
    await fail_attempts(persistence, "broken", (1, "once"))

    flaky = await persistence.replay_checkpoint(ID, TENANT, "flaky")
    broken = await persistence.replay_checkpoint(ID, TENANT, "broken")
    untried = await persistence.replay_checkpoint(ID, TENANT, "untried")

    assert flaky == CheckpointResult(
        found=True, state=b"at last", last_attempt=RetryAttempt(2, "two")
    )
    assert broken == CheckpointResult(found=False, state=b"", last_attempt=RetryAttempt(1, "once"))
    assert untried == CheckpointResult(found=False, state=b"")
    with pytest.raises(InstanceNotFound):
        await persistence.replay_checkpoint(ID, OTHER_TENANT, "flaky")


@pytest_twisted.ensureDeferred
async def test_get_checkpoint_consumes_nothing(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"s")
    await persistence.send_custom_signal(ID, "step-1", b"wait")

    await persistence.get_checkpoint(ID, TENANT, "step-1")

    signals = await persistence.poll_signals(ID, TENANT, "step-1")
    assert signals.custom_signal == CustomSignal("step-1", b"wait")


# -- begin_sleep / finish_sleep (6.4) ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_new_sleep_saves_the_checkpoint_and_suspends(persistence: IPersistence) -> None:
    await running(persistence)

    plan = await persistence.begin_sleep(ID, TENANT, "nap", b"before nap", 5000)

    assert plan == SleepPlan(wake_at_ms=EPOCH_MS + 5000)
    record = await status_of(persistence)
    assert (record.status, record.sleep_until_ms, record.checkpoint_id) == (
        Status.SUSPENDED,
        EPOCH_MS + 5000,
        "nap",
    )
    assert await persistence.get_checkpoint(ID, TENANT, "nap") == b"before nap"
    slept = (await events_of(persistence))[-1]
    assert (slept.event_type, slept.checkpoint_id, slept.created_at_ms) == (
        EventType.SLEEP,
        "nap",
        EPOCH_MS,
    )


@pytest_twisted.ensureDeferred
async def test_a_zero_sleep_wakes_now(persistence: IPersistence) -> None:
    await running(persistence)

    plan = await persistence.begin_sleep(ID, TENANT, "nap", b"", 0)

    assert plan == SleepPlan(wake_at_ms=EPOCH_MS)


@pytest_twisted.ensureDeferred
async def test_a_replayed_interrupted_sleep_keeps_its_wake_time(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"original", 5000)
    clock.advance(2)
    await register(persistence, checkpoint_id="nap")
    events_before = await events_of(persistence)

    plan = await persistence.begin_sleep(ID, TENANT, "nap", b"replayed", 5000)

    assert plan == SleepPlan(wake_at_ms=EPOCH_MS + 5000)
    record = await status_of(persistence)
    assert (record.status, record.sleep_until_ms) == (Status.SUSPENDED, EPOCH_MS + 5000)
    assert await persistence.get_checkpoint(ID, TENANT, "nap") == b"original"
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_a_sleep_that_already_ended_answers_at_once_and_writes_nothing(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)
    clock.advance(5)
    await persistence.finish_sleep(ID, "nap")
    before = await status_of(persistence)
    events_before = await events_of(persistence)

    plan = await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)

    assert plan == SleepPlan(wake_at_ms=None)
    assert await status_of(persistence) == before
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_replaying_a_finished_sleep_during_a_later_one_answers_at_once(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "first", b"", 200)
    clock.advance(0.2)
    await persistence.finish_sleep(ID, "first")
    await persistence.begin_sleep(ID, TENANT, "second", b"", 10_000)
    clock.advance(1)
    await register(persistence)
    events_before = await events_of(persistence)

    first = await persistence.begin_sleep(ID, TENANT, "first", b"", 200)

    assert first == SleepPlan(wake_at_ms=None)
    record = await status_of(persistence)
    assert (record.status, record.sleep_until_ms) == (Status.RUNNING, EPOCH_MS + 10_200)
    assert await events_of(persistence) == events_before
    second = await persistence.begin_sleep(ID, TENANT, "second", b"", 10_000)
    assert second == SleepPlan(wake_at_ms=EPOCH_MS + 10_200)


@pytest_twisted.ensureDeferred
async def test_finish_sleep_of_another_sleep_than_the_recorded_one_writes_nothing(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)
    events_before = await events_of(persistence)
    clock.advance(5)

    status = await persistence.finish_sleep(ID, "another-nap")

    assert status is Status.SUSPENDED
    assert (await status_of(persistence)).sleep_until_ms == EPOCH_MS + 5000
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_sleep_on_a_saved_checkpoint_without_sleep_until_does_not_sleep(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"")

    plan = await persistence.begin_sleep(ID, TENANT, "step-1", b"", 5000)

    assert plan == SleepPlan(wake_at_ms=None)
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_sleep_on_an_instance_not_running_is_refused(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)

    with pytest.raises(InvalidInstanceState) as refused:
        await persistence.begin_sleep(ID, TENANT, "nap-2", b"", 5000)

    assert refused.value.message == (
        f"Instance '{ID}' is in invalid state: expected 'running', got 'suspended'"
    )
    assert await persistence.get_checkpoint(ID, TENANT, "nap-2") is None


@pytest_twisted.ensureDeferred
async def test_sleep_on_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)

    with pytest.raises(InstanceNotFound):
        await persistence.begin_sleep(ID, OTHER_TENANT, "nap", b"", 5000)
    with pytest.raises(InstanceNotFound):
        await persistence.begin_sleep("nobody", TENANT, "nap", b"", 5000)
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_finish_sleep_wakes_the_instance(persistence: IPersistence, clock: Any) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)
    clock.advance(5)

    status = await persistence.finish_sleep(ID, "nap")

    assert status is Status.RUNNING
    record = await status_of(persistence)
    assert (record.status, record.sleep_until_ms) == (Status.RUNNING, None)
    woke = (await events_of(persistence))[-1]
    assert (woke.event_type, woke.checkpoint_id, woke.created_at_ms) == (
        EventType.WAKE,
        "nap",
        EPOCH_MS + 5000,
    )


@pytest_twisted.ensureDeferred
async def test_finish_sleep_after_a_cancel_while_asleep_writes_nothing(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)
    await persistence.send_signal(ID, SignalType.CANCEL, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, True)
    before = await status_of(persistence)
    events_before = await events_of(persistence)
    clock.advance(5)

    status = await persistence.finish_sleep(ID, "nap")

    assert status is Status.CANCELLED
    assert await status_of(persistence) == before
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_finish_sleep_of_an_instance_not_asleep_writes_nothing(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    events_before = await events_of(persistence)

    status = await persistence.finish_sleep(ID, "nap")

    assert status is Status.RUNNING
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_finish_sleep_of_a_vanished_instance_is_unknown(persistence: IPersistence) -> None:
    assert await persistence.finish_sleep("nobody", "nap") is Status.UNKNOWN


# -- record_event (6.5) ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_heartbeat_is_recorded_without_status_change(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    clock.advance(3)

    await report(
        persistence,
        ID,
        TENANT,
        Event(EventType.HEARTBEAT, b"\x00beat", checkpoint_id="step-1", timestamp_ms=42),
    )

    [_, heartbeat] = await events_of(persistence)
    assert heartbeat == EventRecord(
        event_id=heartbeat.event_id,
        instance_id=ID,
        event_type=EventType.HEARTBEAT,
        subtype=None,
        checkpoint_id="step-1",
        payload=b"\x00beat",
        client_ts_ms=42,
        created_at_ms=EPOCH_MS + 3000,
    )
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_custom_event_keeps_its_subtype(persistence: IPersistence) -> None:
    await running(persistence)

    await report(persistence, ID, TENANT, Event(EventType.CUSTOM, b"{}", subtype="progress"))

    custom = (await events_of(persistence))[-1]
    assert (custom.event_type, custom.subtype, custom.payload, custom.client_ts_ms) == (
        EventType.CUSTOM,
        "progress",
        b"{}",
        None,
    )
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest.mark.parametrize("output", [b"result \xff", b""], ids=["bytes", "empty"])
@pytest_twisted.ensureDeferred
async def test_completed_event_finishes_with_output(
    persistence: IPersistence, clock: Any, output: bytes
) -> None:
    await running(persistence)
    clock.advance(9)

    await report(persistence, ID, TENANT, Event(EventType.COMPLETED, output))

    record = await status_of(persistence)
    assert (record.status, record.finished_at_ms, record.output, record.error) == (
        Status.COMPLETED,
        EPOCH_MS + 9000,
        output,
        None,
    )
    assert type(record.output) is bytes
    assert (await events_of(persistence))[-1].event_type is EventType.COMPLETED


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"disk on fire", "disk on fire"),
        ("café ☕".encode(), "café ☕"),
        (b"", "Unknown error"),
        (b"\xff\xfe\x00", "Unknown error (binary payload)"),
    ],
    ids=["text", "utf8", "empty", "binary"],
)
@pytest_twisted.ensureDeferred
async def test_failed_event_finishes_with_error_text(
    persistence: IPersistence, clock: Any, payload: bytes, error: str
) -> None:
    await running(persistence)
    clock.advance(4)

    await report(persistence, ID, TENANT, Event(EventType.FAILED, payload))

    record = await status_of(persistence)
    assert (record.status, record.finished_at_ms, record.error, record.output) == (
        Status.FAILED,
        EPOCH_MS + 4000,
        error,
        None,
    )
    assert (await events_of(persistence))[-1].payload == payload


@pytest_twisted.ensureDeferred
async def test_suspended_event_suspends(persistence: IPersistence) -> None:
    await running(persistence)

    await report(persistence, ID, TENANT, Event(EventType.SUSPENDED))

    record = await status_of(persistence)
    assert (record.status, record.finished_at_ms) == (Status.SUSPENDED, None)


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest.mark.parametrize("event_type", [EventType.HEARTBEAT, EventType.CUSTOM])
@pytest_twisted.ensureDeferred
async def test_terminal_instance_accepts_heartbeat_and_custom(
    persistence: IPersistence, terminal: Status, event_type: EventType
) -> None:
    await running(persistence)
    await make_terminal(persistence, terminal)
    before = await status_of(persistence)

    await report(persistence, ID, TENANT, Event(event_type, b"late"))

    assert (await events_of(persistence))[-1].event_type is event_type
    assert await status_of(persistence) == before


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest.mark.parametrize("event_type", [EventType.COMPLETED, EventType.FAILED, EventType.SUSPENDED])
@pytest_twisted.ensureDeferred
async def test_terminal_instance_refuses_status_events(
    persistence: IPersistence, terminal: Status, event_type: EventType
) -> None:
    await running(persistence)
    await make_terminal(persistence, terminal)
    before = await status_of(persistence)
    events_before = await events_of(persistence)

    with pytest.raises(InvalidInstanceState) as refused:
        await report(persistence, ID, TENANT, Event(event_type, b"again"))

    assert refused.value.message == (
        f"Instance '{ID}' is in invalid state: expected 'non-terminal', got '{terminal.value}'"
    )
    assert await status_of(persistence) == before
    assert await events_of(persistence) == events_before


@pytest_twisted.ensureDeferred
async def test_event_for_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)

    with pytest.raises(InstanceNotFound):
        await report(persistence, ID, OTHER_TENANT, Event(EventType.COMPLETED))
    with pytest.raises(InstanceNotFound):
        await report(persistence, "nobody", TENANT, Event(EventType.HEARTBEAT))
    assert (await status_of(persistence)).status is Status.RUNNING
    assert len(await events_of(persistence)) == 1


# -- get_instance_status (6.7) -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_of_unknown_or_foreign_instance_is_none(persistence: IPersistence) -> None:
    await running(persistence)

    assert await persistence.get_instance_status("nobody", TENANT) is None
    assert await persistence.get_instance_status(ID, OTHER_TENANT) is None


@pytest_twisted.ensureDeferred
async def test_status_shows_every_field(persistence: IPersistence, clock: Any) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"")
    clock.advance(2)
    await report(persistence, ID, TENANT, Event(EventType.COMPLETED, b"done"))

    assert await persistence.get_instance_status(ID, TENANT) == InstanceRecord(
        instance_id=ID,
        tenant_id=TENANT,
        status=Status.COMPLETED,
        checkpoint_id="step-1",
        created_at_ms=EPOCH_MS,
        started_at_ms=EPOCH_MS,
        finished_at_ms=EPOCH_MS + 2000,
        sleep_until_ms=None,
        output=b"done",
        error=None,
    )


# -- poll_signals (6.8) ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_poll_without_signals_is_empty(persistence: IPersistence) -> None:
    await running(persistence)

    assert await persistence.poll_signals(ID, TENANT, "step-1") == Signals()


@pytest_twisted.ensureDeferred
async def test_poll_reports_the_instance_signal_without_consuming_it(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.PAUSE, b"hold")

    first = await persistence.poll_signals(ID, TENANT, None)
    second = await persistence.poll_signals(ID, TENANT, None)

    assert first == second == Signals(signal=PendingSignal(SignalType.PAUSE, b"hold"))


@pytest_twisted.ensureDeferred
async def test_poll_returns_and_consumes_the_custom_signal_of_its_checkpoint(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "step-2", b"data")

    without_checkpoint = await persistence.poll_signals(ID, TENANT, None)
    other_checkpoint = await persistence.poll_signals(ID, TENANT, "step-1")
    own = await persistence.poll_signals(ID, TENANT, "step-2")
    again = await persistence.poll_signals(ID, TENANT, "step-2")

    assert without_checkpoint.custom_signal is None
    assert other_checkpoint.custom_signal is None
    assert own.custom_signal == CustomSignal("step-2", b"data")
    assert again.custom_signal is None


@pytest_twisted.ensureDeferred
async def test_a_peek_reports_the_custom_signal_with_its_id_and_leaves_it_pending(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "approval", b"yes")

    first = await persistence.poll_signals(ID, TENANT, "approval", peek=True)
    again = await persistence.poll_signals(ID, TENANT, "approval", peek=True)

    assert first.custom_signal is not None
    assert (first.custom_signal.checkpoint_id, first.custom_signal.payload) == ("approval", b"yes")
    assert isinstance(first.custom_signal.signal_id, int)
    assert again == first
    consumed = await persistence.poll_signals(ID, TENANT, "approval")
    assert consumed.custom_signal == CustomSignal("approval", b"yes")


@pytest_twisted.ensureDeferred
async def test_custom_signal_ids_grow_with_every_send(persistence: IPersistence) -> None:
    await running(persistence)
    ids = []
    for checkpoint_id, payload in (("a", b"1"), ("a", b"2"), ("b", b"3"), ("a", b"4")):
        await persistence.send_custom_signal(ID, checkpoint_id, payload)
        peeked = (
            await persistence.poll_signals(ID, TENANT, checkpoint_id, peek=True)
        ).custom_signal
        assert peeked is not None and peeked.payload == payload
        ids.append(peeked.signal_id)
        if payload == b"2":
            await persistence.poll_signals(ID, TENANT, "a")

    assert ids == sorted(ids) and len(set(ids)) == 4


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_that_receives_a_peeked_signal_consumes_it_with_the_save(
    persistence: IPersistence, database: FreshDatabase
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "approval", b"yes")
    await persistence.send_custom_signal(ID, "other", b"untouched")
    peeked = (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal

    saved = await persistence.save_checkpoint(ID, TENANT, "approval#signal", b"yes", peeked)

    assert saved.found is False
    assert (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal is None
    assert await count_rows(database, "custom_signals") == 1


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_receiving_a_replaced_signal_leaves_the_newer_one_pending(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "approval", b"old")
    peeked = (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal
    await persistence.send_custom_signal(ID, "approval", b"new")

    await persistence.save_checkpoint(ID, TENANT, "approval#signal", b"old", peeked)

    pending = (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal
    assert pending is not None and pending.payload == b"new"


@pytest_twisted.ensureDeferred
async def test_a_replayed_checkpoint_consumes_nothing_it_receives(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "approval", b"first")
    peeked = (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal
    await persistence.save_checkpoint(ID, TENANT, "approval#signal", b"first", peeked)
    await persistence.send_custom_signal(ID, "approval", b"second")
    later = (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal

    replayed = await persistence.save_checkpoint(ID, TENANT, "approval#signal", b"second", later)

    assert (replayed.found, replayed.state) == (True, b"first")
    pending = (await persistence.poll_signals(ID, TENANT, "approval", peek=True)).custom_signal
    assert pending == later


@pytest_twisted.ensureDeferred
async def test_poll_on_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_custom_signal(ID, "step-1", b"mine")

    with pytest.raises(InstanceNotFound):
        await persistence.poll_signals(ID, OTHER_TENANT, "step-1")
    with pytest.raises(InstanceNotFound):
        await persistence.poll_signals("nobody", TENANT, None)
    assert (await persistence.poll_signals(ID, TENANT, "step-1")).custom_signal is not None


# -- acknowledge_signal (6.9) ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ack_cancel_cancels(persistence: IPersistence, clock: Any) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.CANCEL, b"stop")
    clock.advance(6)

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, True)

    assert result == AckResult(success=True, status=Status.CANCELLED)
    record = await status_of(persistence)
    assert (record.status, record.finished_at_ms) == (Status.CANCELLED, EPOCH_MS + 6000)
    assert (await persistence.poll_signals(ID, TENANT, None)).signal is None


@pytest_twisted.ensureDeferred
async def test_ack_pause_suspends(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.PAUSE, b"")

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True)

    assert result == AckResult(success=True, status=Status.SUSPENDED)
    assert (await status_of(persistence)).status is Status.SUSPENDED
    assert (await persistence.get_instance(ID)).pending_signal is None


@pytest_twisted.ensureDeferred
async def test_ack_resume_runs_a_paused_instance(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.PAUSE, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True)
    await persistence.send_signal(ID, SignalType.RESUME, b"")

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.RESUME, True)

    assert result == AckResult(success=True, status=Status.RUNNING)
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_ack_resume_leaves_a_sleeping_instance_asleep(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.begin_sleep(ID, TENANT, "nap", b"", 5000)
    await persistence.send_signal(ID, SignalType.RESUME, b"")

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.RESUME, True)

    assert result == AckResult(success=True, status=Status.SUSPENDED)
    record = await status_of(persistence)
    assert (record.status, record.sleep_until_ms) == (Status.SUSPENDED, EPOCH_MS + 5000)
    assert (await persistence.poll_signals(ID, TENANT, None)).signal is None


@pytest_twisted.ensureDeferred
async def test_ack_resume_of_a_running_instance_keeps_it_running(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.RESUME, b"")

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.RESUME, True)

    assert result == AckResult(success=True, status=Status.RUNNING)


@pytest_twisted.ensureDeferred
async def test_ack_of_another_type_changes_nothing(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.PAUSE, b"p")

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, True)

    assert result == AckResult(success=False, status=Status.RUNNING)
    assert (await status_of(persistence)).status is Status.RUNNING
    assert (await persistence.poll_signals(ID, TENANT, None)).signal == PendingSignal(
        SignalType.PAUSE, b"p"
    )


@pytest_twisted.ensureDeferred
async def test_ack_without_a_pending_signal_fails(persistence: IPersistence) -> None:
    await running(persistence)

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, True)

    assert result == AckResult(success=False, status=Status.RUNNING)
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_ack_twice_succeeds_once(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.PAUSE, b"")

    first = await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True)
    second = await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True)

    assert first.success is True
    assert second == AckResult(success=False, status=Status.SUSPENDED)


@pytest_twisted.ensureDeferred
async def test_a_repeated_idempotent_pause_ack_suspends_again_after_a_re_registration(
    persistence: IPersistence,
) -> None:
    await persistence.register_instance(ID, TENANT, None, run_id="run-1")
    await persistence.send_signal(ID, SignalType.PAUSE, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True, idempotent=True)
    # The answer was lost with the connection; the client registers again and repeats.
    await persistence.register_instance(ID, TENANT, None, run_id="run-1")

    repeated = await persistence.acknowledge_signal(
        ID, TENANT, SignalType.PAUSE, True, idempotent=True
    )

    assert repeated == AckResult(success=True, status=Status.SUSPENDED)
    assert (await status_of(persistence)).status is Status.SUSPENDED
    assert (await persistence.get_instance(ID)).pending_signal is None


@pytest_twisted.ensureDeferred
async def test_a_repeated_idempotent_cancel_ack_succeeds_and_changes_nothing(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.CANCEL, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, True, idempotent=True)
    before = await status_of(persistence)
    clock.advance(1)

    repeated = await persistence.acknowledge_signal(
        ID, TENANT, SignalType.CANCEL, True, idempotent=True
    )

    assert repeated == AckResult(success=True, status=Status.CANCELLED)
    assert await status_of(persistence) == before


@pytest_twisted.ensureDeferred
async def test_an_idempotent_ack_of_a_replaced_or_absent_signal_fails(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    assert await persistence.acknowledge_signal(
        ID, TENANT, SignalType.PAUSE, True, idempotent=True
    ) == AckResult(success=False, status=Status.RUNNING)
    await persistence.send_signal(ID, SignalType.PAUSE, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True, idempotent=True)
    await persistence.send_signal(ID, SignalType.RESUME, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.RESUME, True, idempotent=True)

    stale = await persistence.acknowledge_signal(
        ID, TENANT, SignalType.PAUSE, True, idempotent=True
    )
    not_acknowledged = await persistence.acknowledge_signal(
        ID, TENANT, SignalType.RESUME, False, idempotent=True
    )

    assert stale == AckResult(success=False, status=Status.RUNNING)
    assert not_acknowledged == AckResult(success=False, status=Status.RUNNING)
    assert (await status_of(persistence)).status is Status.RUNNING


@pytest_twisted.ensureDeferred
async def test_ack_not_acknowledged_changes_nothing(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.CANCEL, b"")

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, False)

    assert result == AckResult(success=False, status=Status.RUNNING)
    assert (await persistence.poll_signals(ID, TENANT, None)).signal == PendingSignal(
        SignalType.CANCEL, b""
    )


@pytest_twisted.ensureDeferred
async def test_ack_cancel_on_a_terminal_instance_keeps_its_status(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.CANCEL, b"")
    await report(persistence, ID, TENANT, Event(EventType.COMPLETED, b"out"))
    before = await status_of(persistence)
    clock.advance(1)

    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.CANCEL, True)

    assert result == AckResult(success=True, status=Status.COMPLETED)
    assert await status_of(persistence) == before
    assert (await persistence.poll_signals(ID, TENANT, None)).signal is None


@pytest_twisted.ensureDeferred
async def test_ack_on_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.CANCEL, b"")

    with pytest.raises(InstanceNotFound):
        await persistence.acknowledge_signal(ID, OTHER_TENANT, SignalType.CANCEL, True)
    with pytest.raises(InstanceNotFound):
        await persistence.acknowledge_signal("nobody", TENANT, SignalType.CANCEL, True)
    assert (await status_of(persistence)).status is Status.RUNNING


# -- record_retry_attempt (6.10) ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_same_retry_attempt_twice_keeps_one_row(
    persistence: IPersistence, database: FreshDatabase
) -> None:
    await running(persistence)

    await persistence.record_retry_attempt(ID, TENANT, "step-1", 1, 100, "timeout")
    await persistence.record_retry_attempt(ID, TENANT, "step-1", 1, 200, "timeout again")
    await persistence.record_retry_attempt(ID, TENANT, "step-1", 2, 300, None)

    assert await count_rows(database, "retry_attempts") == 2


@pytest_twisted.ensureDeferred
async def test_retry_attempts_are_not_checkpoints(persistence: IPersistence) -> None:
    await running(persistence)

    await persistence.record_retry_attempt(ID, TENANT, "step-1", 1, 100, "timeout")

    assert await persistence.get_checkpoint(ID, TENANT, "step-1") is None
    assert await persistence.list_checkpoints(ID, 10, 0) == []
    result = await persistence.save_checkpoint(ID, TENANT, "step-1", b"s")
    assert result.found is False


@pytest_twisted.ensureDeferred
async def test_retry_attempt_for_unknown_or_foreign_instance_is_not_found(
    persistence: IPersistence, database: FreshDatabase
) -> None:
    await running(persistence)

    with pytest.raises(InstanceNotFound):
        await persistence.record_retry_attempt(ID, OTHER_TENANT, "step-1", 1, None, None)
    with pytest.raises(InstanceNotFound):
        await persistence.record_retry_attempt("nobody", TENANT, "step-1", 1, None, None)
    assert await count_rows(database, "retry_attempts") == 0


# -- send_signal / send_custom_signal (7) -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_newer_signal_replaces_the_older(persistence: IPersistence) -> None:
    await running(persistence)

    await persistence.send_signal(ID, SignalType.PAUSE, b"first")
    await persistence.send_signal(ID, SignalType.CANCEL, b"second")

    assert (await persistence.poll_signals(ID, TENANT, None)).signal == PendingSignal(
        SignalType.CANCEL, b"second"
    )


@pytest_twisted.ensureDeferred
async def test_a_newer_signal_clears_the_acknowledgement(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.send_signal(ID, SignalType.PAUSE, b"")
    await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True)

    await persistence.send_signal(ID, SignalType.PAUSE, b"again")

    assert (await persistence.poll_signals(ID, TENANT, None)).signal == PendingSignal(
        SignalType.PAUSE, b"again"
    )
    result = await persistence.acknowledge_signal(ID, TENANT, SignalType.PAUSE, True)
    assert result.success is True


@pytest_twisted.ensureDeferred
async def test_signal_to_a_pending_instance_is_accepted(persistence: IPersistence) -> None:
    await persistence.create_instance(ID, TENANT)

    await persistence.send_signal(ID, SignalType.CANCEL, b"")

    assert (await persistence.get_instance(ID)).pending_signal == PendingSignal(
        SignalType.CANCEL, b""
    )


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest_twisted.ensureDeferred
async def test_signal_to_a_terminal_instance_is_refused(
    persistence: IPersistence, terminal: Status
) -> None:
    await running(persistence)
    await make_terminal(persistence, terminal)

    with pytest.raises(InvalidInstanceState) as refused:
        await persistence.send_signal(ID, SignalType.PAUSE, b"")

    assert refused.value.message == (
        f"Instance '{ID}' is in invalid state: expected 'non-terminal', got '{terminal.value}'"
    )
    assert (await persistence.get_instance(ID)).pending_signal is None


@pytest_twisted.ensureDeferred
async def test_signal_to_an_unknown_instance_is_refused(persistence: IPersistence) -> None:
    with pytest.raises(InstanceNotFound) as refused:
        await persistence.send_signal("nobody", SignalType.CANCEL, b"")

    assert refused.value.message == "Instance 'nobody' not found"


@pytest_twisted.ensureDeferred
async def test_the_newest_custom_signal_wins(persistence: IPersistence) -> None:
    await running(persistence)

    await persistence.send_custom_signal(ID, "step-1", b"old")
    await persistence.send_custom_signal(ID, "step-1", b"new")

    signals = await persistence.poll_signals(ID, TENANT, "step-1")
    assert signals.custom_signal == CustomSignal("step-1", b"new")
    assert (await persistence.poll_signals(ID, TENANT, "step-1")).custom_signal is None


@pytest_twisted.ensureDeferred
async def test_a_custom_signal_waits_for_its_checkpoint(persistence: IPersistence) -> None:
    await persistence.create_instance(ID, TENANT)
    await persistence.send_custom_signal(ID, "step-9", b"later")
    await running(persistence)

    early = await persistence.save_checkpoint(ID, TENANT, "step-1", b"")
    reached = await persistence.save_checkpoint(ID, TENANT, "step-9", b"")

    assert early.custom_signal is None
    assert reached.custom_signal == CustomSignal("step-9", b"later")


@pytest.mark.parametrize("terminal", TERMINAL)
@pytest_twisted.ensureDeferred
async def test_custom_signal_to_a_terminal_instance_is_refused(
    persistence: IPersistence, database: FreshDatabase, terminal: Status
) -> None:
    await running(persistence)
    await make_terminal(persistence, terminal)

    with pytest.raises(InvalidInstanceState) as refused:
        await persistence.send_custom_signal(ID, "step-1", b"too late")

    assert refused.value.message == (
        f"Instance '{ID}' is in invalid state: expected 'non-terminal', got '{terminal.value}'"
    )
    assert await count_rows(database, "custom_signals") == 0


@pytest_twisted.ensureDeferred
async def test_custom_signal_to_an_unknown_instance_is_refused(
    persistence: IPersistence,
) -> None:
    with pytest.raises(InstanceNotFound):
        await persistence.send_custom_signal("nobody", "step-1", b"")


# -- create_instance / get_instance ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_instance_makes_it_pending(persistence: IPersistence) -> None:
    created = await persistence.create_instance(ID, TENANT)

    expected = InstanceRecord(
        instance_id=ID,
        tenant_id=TENANT,
        status=Status.PENDING,
        checkpoint_id=None,
        created_at_ms=EPOCH_MS,
        started_at_ms=None,
        finished_at_ms=None,
        sleep_until_ms=None,
        output=None,
        error=None,
    )
    assert created == expected
    assert await persistence.get_instance_status(ID, TENANT) == expected
    assert await events_of(persistence) == []


@pytest.mark.parametrize("tenant_id", [TENANT, OTHER_TENANT])
@pytest_twisted.ensureDeferred
async def test_create_instance_with_a_taken_id_is_refused(
    persistence: IPersistence, tenant_id: str
) -> None:
    await running(persistence)

    with pytest.raises(InstanceAlreadyExists) as refused:
        await persistence.create_instance(ID, tenant_id)

    assert refused.value.message == f"Instance '{ID}' already exists"
    record = await status_of(persistence)
    assert (record.tenant_id, record.status) == (TENANT, Status.RUNNING)


@pytest_twisted.ensureDeferred
async def test_get_instance_shows_signal_and_counts(persistence: IPersistence) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "step-1", b"a")
    await persistence.save_checkpoint(ID, TENANT, "step-2", b"b")
    await report(persistence, ID, TENANT, Event(EventType.HEARTBEAT))
    await persistence.send_signal(ID, SignalType.PAUSE, b"why")

    details = await persistence.get_instance(ID)

    assert details == InstanceDetails(
        instance=await status_of(persistence),
        pending_signal=PendingSignal(SignalType.PAUSE, b"why"),
        checkpoint_count=2,
        event_count=2,
    )


@pytest_twisted.ensureDeferred
async def test_get_instance_of_an_unknown_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    with pytest.raises(InstanceNotFound):
        await persistence.get_instance("nobody")


# -- listings and counts ----------------------------------------------------------------


async def _populate(persistence: IPersistence, clock: Any) -> None:
    """Five instances, created one second apart except a-2/a-3 (same time).

    a-1 (tenant a, pending), a-2 (a, running), a-3 (a, running),
    b-1 (b, completed), b-2 (b, running).
    """
    await persistence.create_instance("a-1", TENANT)
    clock.advance(1)
    await running(persistence, "a-2")
    await running(persistence, "a-3")
    clock.advance(1)
    await persistence.register_instance("b-1", OTHER_TENANT, None)
    await report(persistence, "b-1", OTHER_TENANT, Event(EventType.COMPLETED, b""))
    clock.advance(1)
    await persistence.register_instance("b-2", OTHER_TENANT, None)


def _ids(records: list[InstanceRecord]) -> list[str]:
    return [record.instance_id for record in records]


@pytest_twisted.ensureDeferred
async def test_list_instances_is_newest_first_with_id_tiebreak(
    persistence: IPersistence, clock: Any
) -> None:
    await _populate(persistence, clock)

    listed = await persistence.list_instances(None, None, 100, 0)

    assert _ids(listed) == ["b-2", "b-1", "a-3", "a-2", "a-1"]
    assert listed[0] == await persistence.get_instance_status("b-2", OTHER_TENANT)


@pytest.mark.parametrize(
    ("tenant_id", "status", "expected"),
    [
        (TENANT, None, ["a-3", "a-2", "a-1"]),
        (None, Status.RUNNING, ["b-2", "a-3", "a-2"]),
        (OTHER_TENANT, Status.RUNNING, ["b-2"]),
        (OTHER_TENANT, Status.PENDING, []),
        ("nobody", None, []),
    ],
)
@pytest_twisted.ensureDeferred
async def test_list_and_count_instances_filter(
    persistence: IPersistence,
    clock: Any,
    tenant_id: str | None,
    status: Status | None,
    expected: list[str],
) -> None:
    await _populate(persistence, clock)

    listed = await persistence.list_instances(tenant_id, status, 100, 0)
    counted = await persistence.count_instances(tenant_id, status)

    assert _ids(listed) == expected
    assert counted == len(expected)


@pytest_twisted.ensureDeferred
async def test_list_instances_pages_with_limit_and_offset(
    persistence: IPersistence, clock: Any
) -> None:
    await _populate(persistence, clock)

    pages = [await persistence.list_instances(None, None, 2, offset) for offset in (0, 2, 4, 6)]

    assert [_ids(page) for page in pages] == [["b-2", "b-1"], ["a-3", "a-2"], ["a-1"], []]
    assert await persistence.count_instances(None, None) == 5


@pytest_twisted.ensureDeferred
async def test_list_instances_after_pages_by_the_last_one_seen(
    persistence: IPersistence, clock: Any
) -> None:
    await _populate(persistence, clock)
    pages: list[list[str]] = []
    after = None
    while True:
        page = await persistence.list_instances_after(None, None, after, 2)
        pages.append(_ids(page))
        if not page:
            break
        after = (page[-1].created_at_ms, page[-1].instance_id)
        await persistence.create_instance(f"new-{len(pages)}", TENANT)

    assert pages == [["b-2", "b-1"], ["a-3", "a-2"], ["a-1"], []]


@pytest.mark.parametrize(
    ("tenant_id", "status", "expected"),
    [(TENANT, None, ["a-3", "a-2", "a-1"]), (None, Status.RUNNING, ["b-2", "a-3", "a-2"])],
)
@pytest_twisted.ensureDeferred
async def test_list_instances_after_filters(
    persistence: IPersistence,
    clock: Any,
    tenant_id: str | None,
    status: Status | None,
    expected: list[str],
) -> None:
    await _populate(persistence, clock)

    first = await persistence.list_instances_after(tenant_id, status, None, 1)
    rest = await persistence.list_instances_after(
        tenant_id, status, (first[0].created_at_ms, first[0].instance_id), 100
    )

    assert _ids(first + rest) == expected


@pytest_twisted.ensureDeferred
async def test_count_by_status_of_one_tenant(persistence: IPersistence, clock: Any) -> None:
    await _populate(persistence, clock)

    assert await persistence.count_by_status(OTHER_TENANT) == {
        Status.RUNNING: 1,
        Status.COMPLETED: 1,
    }
    assert await persistence.count_by_status("nobody") == {}


@pytest_twisted.ensureDeferred
async def test_count_by_status(persistence: IPersistence, clock: Any) -> None:
    assert await persistence.count_by_status() == {}

    await _populate(persistence, clock)

    assert await persistence.count_by_status() == {
        Status.PENDING: 1,
        Status.RUNNING: 3,
        Status.COMPLETED: 1,
    }


@pytest_twisted.ensureDeferred
async def test_list_checkpoints_newest_first_with_sizes(
    persistence: IPersistence, clock: Any
) -> None:
    await running(persistence)
    await persistence.save_checkpoint(ID, TENANT, "a", b"1")
    clock.advance(1)
    await persistence.save_checkpoint(ID, TENANT, "c", b"333")
    await persistence.save_checkpoint(ID, TENANT, "b", b"22")
    clock.advance(1)
    await persistence.save_checkpoint(ID, TENANT, "d", b"")

    listed = await persistence.list_checkpoints(ID, 100, 0)
    page = await persistence.list_checkpoints(ID, 2, 1)

    assert listed == [
        CheckpointInfo("d", 0, EPOCH_MS + 2000),
        CheckpointInfo("c", 3, EPOCH_MS + 1000),
        CheckpointInfo("b", 2, EPOCH_MS + 1000),
        CheckpointInfo("a", 1, EPOCH_MS),
    ]
    assert page == listed[1:3]


@pytest_twisted.ensureDeferred
async def test_list_checkpoints_of_an_unknown_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    with pytest.raises(InstanceNotFound):
        await persistence.list_checkpoints("nobody", 10, 0)


@pytest_twisted.ensureDeferred
async def test_list_events_newest_first_with_filters_and_paging(
    persistence: IPersistence,
) -> None:
    await running(persistence)
    await report(persistence, ID, TENANT, Event(EventType.CUSTOM, b"1", subtype="progress"))
    await report(persistence, ID, TENANT, Event(EventType.HEARTBEAT, b"2"))
    await report(persistence, ID, TENANT, Event(EventType.CUSTOM, b"3", subtype="log"))
    await report(persistence, ID, TENANT, Event(EventType.CUSTOM, b"4", subtype="progress"))
    await running(persistence, "other")
    await report(persistence, "other", TENANT, Event(EventType.CUSTOM, b"x", subtype="progress"))

    every = await persistence.list_events(ID, None, None, 100, 0)
    custom = await persistence.list_events(ID, EventType.CUSTOM, None, 100, 0)
    progress = await persistence.list_events(ID, EventType.CUSTOM, "progress", 100, 0)
    by_subtype = await persistence.list_events(ID, None, "log", 100, 0)
    page = await persistence.list_events(ID, None, None, 2, 1)

    assert [event.payload for event in every] == [b"4", b"3", b"2", b"1", b""]
    assert [event.event_id for event in every] == sorted(
        (event.event_id for event in every), reverse=True
    )
    assert {event.instance_id for event in every} == {ID}
    assert [event.payload for event in custom] == [b"4", b"3", b"1"]
    assert [event.payload for event in progress] == [b"4", b"1"]
    assert [event.payload for event in by_subtype] == [b"3"]
    assert page == every[1:3]


@pytest_twisted.ensureDeferred
async def test_list_events_of_an_unknown_instance_is_not_found(
    persistence: IPersistence,
) -> None:
    with pytest.raises(InstanceNotFound):
        await persistence.list_events("nobody", None, None, 10, 0)


# -- purge ------------------------------------------------------------------------------


async def _instance_with_every_kind_of_row(persistence: IPersistence, instance_id: str) -> None:
    await running(persistence, instance_id)
    await persistence.save_checkpoint(instance_id, TENANT, "step-1", b"state")
    await persistence.send_signal(instance_id, SignalType.PAUSE, b"")
    await persistence.send_custom_signal(instance_id, "step-2", b"")
    await persistence.record_retry_attempt(instance_id, TENANT, "step-1", 1, None, "err")
    await report(persistence, instance_id, TENANT, Event(EventType.HEARTBEAT))


async def _purge_scene(persistence: IPersistence, clock: Any) -> None:
    """old-done/old-failed/old-cancelled finish at EPOCH+0/1/2 s; new-done at
    EPOCH+10 s; still-running never finishes. All have rows in every table."""
    for instance_id in ("old-done", "old-failed", "old-cancelled", "new-done", "still-running"):
        await _instance_with_every_kind_of_row(persistence, instance_id)
    await make_terminal(persistence, Status.COMPLETED, "old-done")
    clock.advance(1)
    await make_terminal(persistence, Status.FAILED, "old-failed")
    clock.advance(1)
    await make_terminal(persistence, Status.CANCELLED, "old-cancelled")
    clock.advance(8)
    await make_terminal(persistence, Status.COMPLETED, "new-done")


OLD = ("old-done", "old-failed", "old-cancelled")
KEPT = ("new-done", "still-running")


@pytest.mark.parametrize(
    ("before_ms", "expected"),
    [(EPOCH_MS, 0), (EPOCH_MS + 1, 1), (EPOCH_MS + 2001, 3), (EPOCH_MS + 10_001, 4)],
)
@pytest_twisted.ensureDeferred
async def test_count_purgeable_counts_terminal_instances_finished_before(
    persistence: IPersistence, clock: Any, before_ms: int, expected: int
) -> None:
    await _purge_scene(persistence, clock)

    assert await persistence.count_purgeable(before_ms) == expected


@pytest_twisted.ensureDeferred
async def test_purge_removes_exactly_the_old_terminal_instances_with_their_rows(
    persistence: IPersistence, clock: Any, database: FreshDatabase
) -> None:
    await _purge_scene(persistence, clock)
    kept_events = {instance_id: await events_of(persistence, instance_id) for instance_id in KEPT}

    deleted = await persistence.purge_finished(EPOCH_MS + 5000, 100)

    assert deleted == 3
    for instance_id in OLD:
        assert await persistence.get_instance_status(instance_id, TENANT) is None
        with pytest.raises(InstanceNotFound):
            await persistence.get_checkpoint(instance_id, None, "step-1")
        for table in CHILD_TABLES:
            assert await count_rows(database, table, instance_id) == 0, table
    for instance_id in KEPT:
        assert await events_of(persistence, instance_id) == kept_events[instance_id]
        assert await persistence.get_checkpoint(instance_id, None, "step-1") == b"state"
        for table in ("checkpoints", "signals", "custom_signals", "retry_attempts"):
            assert await count_rows(database, table, instance_id) == 1, table
    assert await persistence.count_purgeable(EPOCH_MS + 5000) == 0


@pytest_twisted.ensureDeferred
async def test_purge_honours_its_limit(persistence: IPersistence, clock: Any) -> None:
    await _purge_scene(persistence, clock)

    rounds = [await persistence.purge_finished(EPOCH_MS + 5000, 2) for _ in range(3)]

    assert rounds == [2, 1, 0]
    assert await persistence.count_instances(None, None) == 2
    remaining = {
        record.instance_id for record in await persistence.list_instances(None, None, 10, 0)
    }
    assert remaining == set(KEPT)
