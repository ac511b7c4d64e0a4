"""How many round trips the PostgreSQL engine spends on the operations of a workflow.

Each ``execute`` of a txpostgres cursor is one query message and one answer:
one round trip to the server. ``BEGIN``, the writes and ``COMMIT`` travel
with the statements around them, so the hot operations cost two round trips
(the reads they decide on, then their writes with the commit), and reads one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from txpostgres import txpostgres

from runtara.model import Event, EventType
from tests.persistence.support import EPOCH_S
from tests.pg import make_postgresql_persistence, require_server

pytestmark = pytest.mark.postgres

TENANT = "tenant-a"


class RoundTrips:
    """Counts the queries the engine's cursors send, and remembers them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        execute = txpostgres.Cursor.execute

        def counting_execute(cursor: Any, query: str, params: Any = None) -> Any:
            self.sent.append(query)
            return execute(cursor, query, params)

        monkeypatch.setattr(txpostgres.Cursor, "execute", counting_execute)

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


@pytest_twisted.async_yield_fixture
async def persistence() -> AsyncIterator[Any]:
    require_server()
    clock = task.Clock()
    clock.advance(EPOCH_S)
    provider = await make_postgresql_persistence(clock)
    yield provider
    await provider.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    return RoundTrips(monkeypatch)


@pytest_twisted.ensureDeferred
async def test_registering_a_new_instance_costs_three_round_trips(
    persistence: Any, round_trips: RoundTrips
) -> None:
    registration = await persistence.register_instance("i-1", TENANT, None)

    assert registration.success
    sent = round_trips.take()
    assert len(sent) == 3, sent
    assert sent[0].startswith("BEGIN; SELECT 1 FROM instances")
    assert sent[-1].endswith("COMMIT")


@pytest_twisted.ensureDeferred
async def test_a_checkpoint_costs_two_round_trips_new_or_replayed(
    persistence: Any, round_trips: RoundTrips
) -> None:
    await persistence.register_instance("i-1", TENANT, None)
    round_trips.take()

    saved = await persistence.save_checkpoint("i-1", TENANT, "step-1", b"state")
    saving = round_trips.take()
    replayed = await persistence.save_checkpoint("i-1", TENANT, "step-1", b"other")
    replaying = round_trips.take()

    assert (saved.found, replayed.found, replayed.state) == (False, True, b"state")
    assert len(saving) == 2, saving
    assert saving[1].startswith("INSERT INTO checkpoints") and saving[1].endswith("COMMIT")
    assert len(replaying) == 2, replaying


@pytest_twisted.ensureDeferred
async def test_reporting_completion_costs_two_round_trips(
    persistence: Any, round_trips: RoundTrips
) -> None:
    await persistence.register_instance("i-1", TENANT, None)
    round_trips.take()

    await persistence.record_event("i-1", TENANT, Event(EventType.COMPLETED, b"done"))

    sent = round_trips.take()
    assert len(sent) == 2, sent
    record = await persistence.get_instance_status("i-1", TENANT)
    assert (record.status.value, record.output) == ("completed", b"done")


@pytest_twisted.ensureDeferred
async def test_reading_a_checkpoint_costs_one_round_trip_and_no_transaction(
    persistence: Any, round_trips: RoundTrips
) -> None:
    await persistence.register_instance("i-1", TENANT, None)
    await persistence.save_checkpoint("i-1", TENANT, "step-1", b"state")
    round_trips.take()

    state = await persistence.get_checkpoint("i-1", TENANT, "step-1")

    assert state == b"state"
    (query,) = round_trips.take()
    assert "BEGIN" not in query and "COMMIT" not in query
