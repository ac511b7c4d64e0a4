"""The ``runtara`` command against real databases (shared/CLI.md), on SQLite and PostgreSQL.

Commands run in-process through ``runtara.cli.run`` (the reactor is already
running under pytest-twisted) with ``capsys``, and as a subprocess
(``python -m runtara.cli``) for the black-box checks of exit statuses and
one-line errors. Instances are made through a persistence built with a
``task.Clock``, so times in the output are exact and ages are controlled.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from runtara.admin import Admin
from runtara.cli import Command, Output, build_parser, execute, main, run
from runtara.config import config_from_env
from runtara.interfaces import IPersistence
from runtara.model import Event, EventType, SignalType
from runtara.persistence import open_persistence
from runtara.persistence.migrations import load_migrations
from tests.cli.support import DAY_S, ENGINES, EPOCH_S, Database, fresh_database

REPO = Path(__file__).resolve().parents[2]


@pytest_twisted.async_yield_fixture(params=ENGINES)
async def blank(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database of each engine, not migrated (SQLite: no file yet)."""
    database = await fresh_database(request.param, tmp_path)
    yield database
    await database.drop()


class Seeder:
    """Makes instances through a persistence whose clock the test sets."""

    def __init__(self, persistence: IPersistence, clock: task.Clock) -> None:
        self.persistence = persistence
        self.clock = clock

    def at(self, seconds: float) -> None:
        self.clock.advance(seconds - self.clock.seconds())

    async def running(self, instance_id: str, tenant: str = "t") -> None:
        registration = await self.persistence.register_instance(instance_id, tenant, None)
        assert registration.success, registration

    async def finished(self, instance_id: str, tenant: str = "t") -> None:
        """A completed instance with a row in every table."""
        persistence = self.persistence
        await self.running(instance_id, tenant)
        await persistence.save_checkpoint(instance_id, tenant, "cp", b"state")
        await persistence.record_retry_attempt(instance_id, tenant, "cp", 1, None, "boom")
        await persistence.send_custom_signal(instance_id, "later", b"waiting")
        await persistence.send_signal(instance_id, SignalType.PAUSE, b"")
        await persistence.record_event(instance_id, tenant, Event(EventType.COMPLETED, b"out"))


@pytest_twisted.async_yield_fixture
async def seeder(blank: Database) -> AsyncIterator[Seeder]:
    from twisted.internet import reactor

    clock = task.Clock()
    clock.advance(EPOCH_S)
    persistence = open_persistence(blank.url, clock, reactor, pool_size=1)
    await persistence.start()
    await persistence.migrate()
    yield Seeder(persistence, clock)
    await persistence.close()


@pytest.fixture
def database(blank: Database, seeder: Seeder) -> Database:
    """A fresh, migrated database of each engine (seed it with ``seeder``)."""
    return blank


@dataclass(frozen=True)
class Outcome:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """An environment whose default state directory is inside the test's directory."""
    return {"HOME": str(tmp_path / "home")}


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], environ: dict[str, str]) -> Any:
    """``await cli(*argv)``: run ``runtara argv`` in-process; an ``Outcome``."""

    async def run_cli(*argv: str) -> Outcome:
        from twisted.internet import reactor

        capsys.readouterr()
        status = await run(list(argv), reactor, environ)
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err)

    return run_cli


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_runtara(*argv: str, environ: dict[str, str], cwd: Path, stdin: str = "") -> Outcome:
    """Run ``python -m runtara.cli argv`` as operators would, in ``cwd``."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **environ}
    done = subprocess.run(
        [sys.executable, "-m", "runtara.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_one_line_failure(outcome: Outcome, status: int) -> None:
    assert outcome.status == status, outcome
    assert outcome.out == ""
    lines = outcome.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runtara"), outcome.err
    assert "Traceback" not in outcome.err


# -- health and migrate ------------------------------------------------------------------

LATEST = load_migrations("sqlite")[-1].version
"""The schema version the code migrates to (both dialects have the same migrations)."""


@pytest_twisted.ensureDeferred
async def test_health_prints_the_url_the_schema_version_and_counts_by_status(cli, database, seeder):
    await seeder.persistence.create_instance("p-1", "t")
    await seeder.running("r-1")
    await seeder.running("r-2")
    await seeder.finished("c-1")
    outcome = await cli("--database", database.text, "health")
    assert outcome.status == 0 and outcome.err == ""
    masked = database.url.masked()
    assert outcome.out.splitlines() == [
        f"database        {masked}",
        "reachable       yes",
        f"schema version  {LATEST}",
        "instances       4",
        "  pending       1",
        "  running       2",
        "  suspended     0",
        "  completed     1",
        "  failed        0",
        "  cancelled     0",
    ]
    as_json = await cli("--json", "--database", database.text, "health")
    assert as_json.json() == {
        "database": masked,
        "reachable": True,
        "schema_version": LATEST,
        "counts": {
            "pending": 1,
            "running": 2,
            "suspended": 0,
            "completed": 1,
            "failed": 0,
            "cancelled": 0,
        },
        "total": 4,
    }


@pytest_twisted.ensureDeferred
async def test_health_prints_the_url_resolved_and_masked(cli, database, monkeypatch):
    """PostgreSQL: the password shows as ***. SQLite: a relative URL shows as absolute."""
    if database.url.sqlite_path is not None:
        monkeypatch.chdir(database.url.sqlite_path.parent)
        given, shown = f"sqlite:{database.url.sqlite_path.name}", database.url.masked()
    else:
        given = database.text.replace("://root@", "://root:s3cret@", 1)
        shown = database.text.replace("://root@", "://root:***@", 1)
    assert given != shown
    outcome = await cli("--database", given, "health")
    assert outcome.status == 0, outcome
    assert outcome.out.splitlines()[0] == f"database        {shown}"
    assert "s3cret" not in outcome.out


@pytest_twisted.ensureDeferred
async def test_migrate_applies_the_migrations_then_reports_up_to_date(cli, blank):
    outcome = await cli("--database", blank.text, "migrate")
    assert outcome.status == 0, outcome
    masked = blank.url.masked()
    applied = f"applied {LATEST} migration{'' if LATEST == 1 else 's'}"
    assert outcome.out == (f"{masked}: schema version {LATEST} ({applied}, from version 0)\n")
    again = await cli("--database", blank.text, "--json", "migrate")
    assert again.json() == {
        "database": masked,
        "schema_version": LATEST,
        "previous_version": LATEST,
        "applied": 0,
    }
    up_to_date = await cli("--database", blank.text, "migrate")
    assert up_to_date.out == f"{masked}: schema version {LATEST} (already up to date)\n"


@pytest_twisted.ensureDeferred
async def test_commands_on_an_unmigrated_database_tell_to_migrate(cli, blank):
    if blank.url.sqlite_path is not None:
        blank.url.sqlite_path.touch()
    for argv in (("health",), ("instances", "list"), ("purge", "--older-than", "1d")):
        outcome = await cli("--database", blank.text, *argv)
        assert_one_line_failure(outcome, 1)
        assert "runtara migrate" in outcome.err
    assert await blank.tables() == []


# -- instances ------------------------------------------------------------------------------


async def three_instances(seeder: Seeder) -> None:
    await seeder.persistence.create_instance("i-1", "acme")
    seeder.at(EPOCH_S + 60)
    await seeder.running("i-2", "acme")
    seeder.at(EPOCH_S + 120)
    await seeder.finished("i-3", "zeta")


@pytest_twisted.ensureDeferred
async def test_instances_list_is_a_table_newest_first(cli, database, seeder):
    await three_instances(seeder)
    outcome = await cli("--database", database.text, "instances", "list")
    assert outcome.status == 0 and outcome.err == ""
    assert outcome.out.splitlines() == [
        "ID   TENANT  STATUS     CHECKPOINT  CREATED               STARTED               FINISHED",
        "i-3  zeta    completed  cp          2023-11-14T22:15:20Z  2023-11-14T22:15:20Z"
        "  2023-11-14T22:15:20Z",
        "i-2  acme    running    -           2023-11-14T22:14:20Z  2023-11-14T22:14:20Z  -",
        "i-1  acme    pending    -           2023-11-14T22:13:20Z  -                     -",
    ]


@pytest_twisted.ensureDeferred
async def test_instances_list_as_json(cli, database, seeder):
    await three_instances(seeder)
    outcome = await cli("--database", database.text, "--json", "instances", "list")
    document = outcome.json()
    assert [item["instance_id"] for item in document["instances"]] == ["i-3", "i-2", "i-1"]
    assert (document["total"], document["offset"], document["has_more"]) == (3, 0, False)
    assert document["instances"][0] == {
        "instance_id": "i-3",
        "tenant_id": "zeta",
        "status": "completed",
        "checkpoint_id": "cp",
        "created_at": "2023-11-14T22:15:20.000Z",
        "created_at_ms": (EPOCH_S + 120) * 1000,
        "started_at": "2023-11-14T22:15:20.000Z",
        "started_at_ms": (EPOCH_S + 120) * 1000,
        "finished_at": "2023-11-14T22:15:20.000Z",
        "finished_at_ms": (EPOCH_S + 120) * 1000,
        "sleep_until": None,
        "sleep_until_ms": None,
        "output": "out",
        "error": None,
    }


@pytest_twisted.ensureDeferred
async def test_instances_list_filters_by_tenant_and_status(cli, database, seeder):
    await three_instances(seeder)

    async def listed(*options: str) -> list[str]:
        outcome = await cli("--database", database.text, "--json", "instances", "list", *options)
        assert outcome.status == 0, outcome
        return [item["instance_id"] for item in outcome.json()["instances"]]

    assert await listed("--tenant", "acme") == ["i-2", "i-1"]
    assert await listed("--status", "completed") == ["i-3"]
    assert await listed("--tenant", "acme", "--status", "running") == ["i-2"]
    assert await listed("--tenant", "nobody") == []
    bad = await cli("--database", database.text, "instances", "list", "--status", "asleep")
    assert_one_line_failure(bad, 2)


@pytest_twisted.ensureDeferred
async def test_long_listings_paginate_with_a_hint(cli, database, seeder):
    for number in range(5):
        seeder.at(EPOCH_S + number)
        await seeder.persistence.create_instance(f"i-{number}", "t")
    first = await cli("--database", database.text, "instances", "list", "--limit", "2")
    assert [line.split()[0] for line in first.out.splitlines()[1:]] == ["i-4", "i-3"]
    assert first.err == "showing 1-2 of 5; use --offset 2 for more\n"
    middle = await cli(
        "--database", database.text, "instances", "list", "--limit", "2", "--offset", "2"
    )
    assert [line.split()[0] for line in middle.out.splitlines()[1:]] == ["i-2", "i-1"]
    assert middle.err == "showing 3-4 of 5; use --offset 4 for more\n"
    last = await cli("--database", database.text, "instances", "list", "--offset", "4")
    assert [line.split()[0] for line in last.out.splitlines()[1:]] == ["i-0"]
    assert last.err == ""
    as_json = await cli("--database", database.text, "--json", "instances", "list", "--limit", "2")
    document = as_json.json()
    assert (document["total"], document["limit"], document["has_more"]) == (5, 2, True)
    assert as_json.err == ""


@pytest_twisted.ensureDeferred
async def test_the_default_page_is_fifty(cli, database, seeder):
    for number in range(51):
        await seeder.persistence.create_instance(f"i-{number:02d}", "t")
    outcome = await cli("--database", database.text, "instances", "list")
    assert len(outcome.out.splitlines()) == 1 + 50
    assert outcome.err == "showing 1-50 of 51; use --offset 50 for more\n"


@pytest_twisted.ensureDeferred
async def test_instances_show_has_every_field_the_pending_signal_and_counts(cli, database, seeder):
    await seeder.running("i-1", "acme")
    await seeder.persistence.save_checkpoint("i-1", "acme", "step-1", b"12345")
    await seeder.persistence.send_signal("i-1", SignalType.PAUSE, b"maintenance")
    outcome = await cli("--database", database.text, "instances", "show", "i-1")
    assert outcome.status == 0 and outcome.err == ""
    assert outcome.out.splitlines() == [
        "instance        i-1",
        "tenant          acme",
        "status          running",
        "checkpoint      step-1",
        "created         2023-11-14T22:13:20Z",
        "started         2023-11-14T22:13:20Z",
        "finished        -",
        "sleep until     -",
        "output          -",
        "error           -",
        "pending signal  pause (payload: maintenance)",
        "checkpoints     1",
        "events          1",
    ]
    document = (await cli("--database", database.text, "--json", "instances", "show", "i-1")).json()
    assert document["instance_id"] == "i-1" and document["status"] == "running"
    assert document["pending_signal"] == {"signal_type": "pause", "payload": "maintenance"}
    assert (document["checkpoint_count"], document["event_count"]) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_instances_show_reports_binary_output_in_base64(cli, database, seeder):
    await seeder.running("i-1")
    await seeder.persistence.record_event("i-1", "t", Event(EventType.COMPLETED, b"\xff\x00"))
    table = await cli("--database", database.text, "instances", "show", "i-1")
    assert "output          base64:/wA=" in table.out.splitlines()
    document = (await cli("--database", database.text, "--json", "instances", "show", "i-1")).json()
    assert document["output"] == {"base64": "/wA="}


@pytest_twisted.ensureDeferred
async def test_instances_create_makes_a_pending_instance(cli, database):
    outcome = await cli("--database", database.text, "instances", "create", "i-1", "--tenant", "t")
    assert outcome.status == 0, outcome
    assert outcome.out == "created instance i-1 (tenant t, status pending)\n"
    document = (
        await cli(
            "--database", database.text, "--json", "instances", "create", "i-2", "--tenant", "u"
        )
    ).json()
    assert (document["instance_id"], document["tenant_id"], document["status"]) == (
        "i-2",
        "u",
        "pending",
    )
    assert await database.instance_ids() == {"i-1", "i-2"}
    before = await database.snapshot()
    again = await cli("--database", database.text, "instances", "create", "i-1", "--tenant", "u")
    assert_one_line_failure(again, 1)
    assert "Instance 'i-1' already exists" in again.err
    assert await database.snapshot() == before


# -- checkpoints and events -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_checkpoints_list_shows_sizes_in_bytes_newest_first(cli, database, seeder):
    await seeder.running("i-1")
    for offset, (name, state) in enumerate((("first", b"x" * 1500), ("second", b""))):
        seeder.at(EPOCH_S + offset)
        await seeder.persistence.save_checkpoint("i-1", "t", name, state)
    outcome = await cli("--database", database.text, "checkpoints", "list", "i-1")
    assert outcome.out.splitlines() == [
        "CHECKPOINT  SIZE  CREATED",
        "second         0  2023-11-14T22:13:21Z",
        "first       1500  2023-11-14T22:13:20Z",
    ]
    document = (
        await cli("--database", database.text, "--json", "checkpoints", "list", "i-1")
    ).json()
    assert document["checkpoints"][1] == {
        "checkpoint_id": "first",
        "size_bytes": 1500,
        "created_at": "2023-11-14T22:13:20.000Z",
        "created_at_ms": EPOCH_S * 1000,
    }
    paged = await cli("--database", database.text, "checkpoints", "list", "i-1", "--limit", "1")
    assert paged.err == "showing 1-1 of 2; use --offset 1 for more\n"


@pytest_twisted.ensureDeferred
async def test_checkpoints_get_prints_the_exact_state(capsysbinary, environ, database, seeder):
    from twisted.internet import reactor

    state = b"\x00\xffbinary\nstate"
    await seeder.running("i-1")
    await seeder.persistence.save_checkpoint("i-1", "t", "cp", state)
    status = await run(
        ["--database", database.text, "checkpoints", "get", "i-1", "cp"], reactor, environ
    )
    captured = capsysbinary.readouterr()
    assert (status, captured.out, captured.err) == (0, state, b"")


@pytest_twisted.ensureDeferred
async def test_checkpoints_get_as_json_and_to_a_file(cli, database, seeder, tmp_path):
    await seeder.running("i-1")
    await seeder.persistence.save_checkpoint("i-1", "t", "text", b"hello")
    await seeder.persistence.save_checkpoint("i-1", "t", "binary", b"\xff\xfe")
    text = (
        await cli("--database", database.text, "--json", "checkpoints", "get", "i-1", "text")
    ).json()
    assert text == {
        "instance_id": "i-1",
        "checkpoint_id": "text",
        "size_bytes": 5,
        "state": "hello",
    }
    binary = (
        await cli("--database", database.text, "--json", "checkpoints", "get", "i-1", "binary")
    ).json()
    assert binary["state"] == {"base64": "//4="}
    target = tmp_path / "state.bin"
    written = await cli(
        "--database", database.text, "checkpoints", "get", "i-1", "binary", "--output", str(target)
    )
    assert written.out == f"wrote 2 bytes to {target}\n"
    assert target.read_bytes() == b"\xff\xfe"


@pytest_twisted.ensureDeferred
async def test_checkpoints_get_of_a_missing_checkpoint_writes_no_file(
    cli, database, seeder, tmp_path
):
    await seeder.running("i-1")
    target = tmp_path / "state.bin"
    outcome = await cli(
        "--database", database.text, "checkpoints", "get", "i-1", "nope", "--output", str(target)
    )
    assert_one_line_failure(outcome, 1)
    assert "Checkpoint 'nope' not found for instance 'i-1'" in outcome.err
    assert not target.exists()
    nowhere = await cli(
        "--database",
        database.text,
        "checkpoints",
        "get",
        "i-1",
        "nope",
        "--output",
        str(tmp_path / "missing" / "state.bin"),
    )
    assert_one_line_failure(nowhere, 1)
    assert "directory does not exist" in nowhere.err


async def some_events(seeder: Seeder) -> None:
    persistence = seeder.persistence
    await seeder.running("i-1")
    seeder.at(EPOCH_S + 1)
    long_text = ("progress " * 10).encode()
    await persistence.record_event(
        "i-1", "t", Event(EventType.CUSTOM, long_text, "cp", 7, "progress")
    )
    seeder.at(EPOCH_S + 2)
    await persistence.record_event("i-1", "t", Event(EventType.CUSTOM, b"\xff", subtype="blob"))
    seeder.at(EPOCH_S + 3)
    await persistence.record_event("i-1", "t", Event(EventType.HEARTBEAT))


@pytest_twisted.ensureDeferred
async def test_events_list_is_a_table_newest_first_with_payload_previews(cli, database, seeder):
    await some_events(seeder)
    outcome = await cli("--database", database.text, "events", "list", "i-1")
    assert outcome.status == 0 and outcome.err == ""
    assert outcome.out.splitlines() == [
        "TIME                  TYPE       SUBTYPE   CHECKPOINT  PAYLOAD",
        "2023-11-14T22:13:23Z  heartbeat  -         -",
        "2023-11-14T22:13:22Z  custom     blob      -           <1 bytes, binary>",
        "2023-11-14T22:13:21Z  custom     progress  cp          "
        "progress progress progress progress p...",
        "2023-11-14T22:13:20Z  started    -         -",
    ]


@pytest_twisted.ensureDeferred
async def test_events_list_filters_and_json(cli, database, seeder):
    await some_events(seeder)
    custom = await cli(
        "--database", database.text, "--json", "events", "list", "i-1", "--type", "custom"
    )
    document = custom.json()
    assert [event["subtype"] for event in document["events"]] == ["blob", "progress"]
    assert document["events"][0]["payload"] == {"base64": "/w=="}
    assert document["events"][1] == {
        "event_id": document["events"][1]["event_id"],
        "event_type": "custom",
        "subtype": "progress",
        "checkpoint_id": "cp",
        "payload": "progress " * 10,
        "client_ts_ms": 7,
        "created_at": "2023-11-14T22:13:21.000Z",
        "created_at_ms": (EPOCH_S + 1) * 1000,
    }
    progress = await cli(
        "--database", database.text, "--json", "events", "list", "i-1", "--subtype", "progress"
    )
    assert [event["subtype"] for event in progress.json()["events"]] == ["progress"]
    limited = await cli("--database", database.text, "events", "list", "i-1", "--limit", "1")
    assert len(limited.out.splitlines()) == 2
    assert limited.err == "showing 1-1 of 4; use --offset 1 for more\n"
    filtered = await cli(
        "--database", database.text, "events", "list", "i-1", "--type", "custom", "--limit", "1"
    )
    assert filtered.err == "showing 1-1; use --offset 1 for more\n"
    bad_type = await cli("--database", database.text, "events", "list", "i-1", "--type", "nap")
    assert_one_line_failure(bad_type, 2)


# -- signals --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_signal_becomes_the_pending_signal_seen_at_the_next_checkpoint(cli, database, seeder):
    await seeder.running("i-1")
    outcome = await cli("--database", database.text, "signal", "i-1", "pause")
    assert (outcome.status, outcome.out) == (0, "sent pause to instance i-1\n")
    replaced = await cli(
        "--database", database.text, "--json", "signal", "i-1", "cancel", "--payload", "stop now"
    )
    assert replaced.json() == {"instance_id": "i-1", "signal_type": "cancel", "payload": "stop now"}
    result = await seeder.persistence.save_checkpoint("i-1", "t", "a", b"")
    assert result.pending_signal is not None
    assert (result.pending_signal.signal_type, result.pending_signal.payload) == (
        SignalType.CANCEL,
        b"stop now",
    )


@pytest_twisted.ensureDeferred
async def test_signals_to_unknown_or_terminal_instances_fail_and_write_nothing(
    cli, database, seeder
):
    await seeder.finished("done")
    before = await database.snapshot()
    terminal = await cli("--database", database.text, "signal", "done", "cancel")
    assert_one_line_failure(terminal, 1)
    assert "expected 'non-terminal', got 'completed'" in terminal.err
    unknown = await cli("--database", database.text, "signal", "nope", "resume")
    assert_one_line_failure(unknown, 1)
    assert "Instance 'nope' not found" in unknown.err
    custom = await cli("--database", database.text, "custom-signal", "nope", "cp")
    assert_one_line_failure(custom, 1)
    custom_terminal = await cli(
        "--database", database.text, "custom-signal", "done", "cp", "--payload", "too late"
    )
    assert_one_line_failure(custom_terminal, 1)
    assert "expected 'non-terminal', got 'completed'" in custom_terminal.err
    assert custom_terminal.out == ""
    assert await database.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_custom_signal_from_text_or_a_file_waits_for_its_checkpoint(
    cli, database, seeder, tmp_path
):
    await seeder.running("i-1")
    outcome = await cli(
        "--database", database.text, "custom-signal", "i-1", "gate", "--payload", "a"
    )
    assert outcome.status == 0, outcome
    assert outcome.out == "sent a custom signal (1 bytes) to instance i-1 for checkpoint gate\n"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x01\x02 from a file")
    from_file = await cli(
        "--database",
        database.text,
        "--json",
        "custom-signal",
        "i-1",
        "gate",
        "--payload-file",
        str(payload),
    )
    assert from_file.json() == {
        "instance_id": "i-1",
        "checkpoint_id": "gate",
        "payload": "\x01\x02 from a file",
    }
    elsewhere = await seeder.persistence.save_checkpoint("i-1", "t", "first", b"")
    assert elsewhere.custom_signal is None
    at_gate = await seeder.persistence.save_checkpoint("i-1", "t", "gate", b"")
    assert at_gate.custom_signal is not None
    assert at_gate.custom_signal.payload == b"\x01\x02 from a file"


@pytest_twisted.ensureDeferred
async def test_custom_signal_with_a_missing_payload_file_writes_nothing(
    cli, database, seeder, tmp_path
):
    await seeder.running("i-1")
    before = await database.snapshot()
    outcome = await cli(
        "--database",
        database.text,
        "custom-signal",
        "i-1",
        "gate",
        "--payload-file",
        str(tmp_path / "absent"),
    )
    assert_one_line_failure(outcome, 1)
    assert "cannot read payload file" in outcome.err
    both = await cli(
        "--database",
        database.text,
        "custom-signal",
        "i-1",
        "gate",
        "--payload",
        "x",
        "--payload-file",
        str(tmp_path / "absent"),
    )
    assert_one_line_failure(both, 2)
    assert await database.snapshot() == before


# -- purge ----------------------------------------------------------------------------------


async def ages(seeder: Seeder) -> set[str]:
    """Instances finished 10 days ago, live ones as old, one finished an hour ago.

    Returns the ids ``purge --older-than 7d`` must delete.
    """
    now = time.time()
    seeder.at(now - 10 * DAY_S)
    await seeder.finished("old-1")
    await seeder.finished("old-2")
    await seeder.running("old-running")
    await seeder.persistence.create_instance("old-pending", "t")
    seeder.at(now - 3600)
    await seeder.finished("recent")
    return {"old-1", "old-2"}


@pytest_twisted.ensureDeferred
async def test_purge_deletes_exactly_the_old_finished_instances_and_their_rows(
    cli, database, seeder
):
    old = await ages(seeder)
    before = await database.snapshot()
    outcome = await cli("--database", database.text, "purge", "--older-than", "7d")
    assert outcome.status == 0 and outcome.err == "", outcome
    assert outcome.out.startswith("deleted 2 instances finished before ")
    after = await database.snapshot()
    assert after == {
        table: [row for row in rows if row[0] not in old] for table, rows in before.items()
    }
    assert await database.instance_ids() == {"old-running", "old-pending", "recent"}
    nothing = await cli("--database", database.text, "--json", "purge", "--older-than", "7d")
    document = nothing.json()
    assert (document["dry_run"], document["count"], document["deleted"]) == (False, 0, 0)
    assert document["finished_before_ms"] <= (time.time() - 7 * DAY_S) * 1000


@pytest_twisted.ensureDeferred
async def test_purge_dry_run_counts_and_deletes_nothing(cli, database, seeder):
    await ages(seeder)
    before = await database.snapshot()
    outcome = await cli("--database", database.text, "purge", "--older-than", "2h", "--dry-run")
    assert outcome.status == 0, outcome
    assert outcome.out.startswith("would delete 2 instances finished before ")
    assert outcome.out.endswith(" (dry run)\n")
    document = (
        await cli(
            "--database", database.text, "--json", "purge", "--older-than", "30m", "--dry-run"
        )
    ).json()
    assert (document["dry_run"], document["count"], document["deleted"]) == (True, 3, 0)
    assert await database.snapshot() == before


@pytest_twisted.ensureDeferred
async def test_purge_reports_progress_on_large_deletions(cli, database, seeder):
    seeder.at(time.time() - 2 * DAY_S)
    for number in range(501):
        await seeder.running(f"i-{number}")
        await seeder.persistence.record_event(f"i-{number}", "t", Event(EventType.FAILED))
    outcome = await cli("--database", database.text, "purge", "--older-than", "1d")
    assert outcome.status == 0, outcome
    assert outcome.err.splitlines() == [
        "purged 500 of 501 instances",
        "purged 501 of 501 instances",
    ]
    assert outcome.out.startswith("deleted 501 instances finished before ")
    assert await database.instance_ids() == set()


# -- options and databases ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_global_options_are_accepted_after_the_command(cli, database, seeder):
    await seeder.persistence.create_instance("i-1", "t")
    outcome = await cli("instances", "list", "--json", "--database", database.text)
    assert outcome.status == 0, outcome
    assert [item["instance_id"] for item in outcome.json()["instances"]] == ["i-1"]
    before = await cli("--json", "instances", "show", "i-1", "--database", database.text)
    assert before.json()["instance_id"] == "i-1"


@pytest_twisted.ensureDeferred
async def test_the_default_database_is_the_servers_embedded_one(cli, environ, tmp_path):
    state = tmp_path / "state"
    environ["RUNTARA_STATE_DIR"] = str(state)
    server_database = config_from_env(environ).database_url
    assert server_database.sqlite_path == state / "runtara.db"

    missing = await cli("health")
    assert_one_line_failure(missing, 1)
    assert f"no database at {server_database.masked()}" in missing.err
    assert "runtara migrate" in missing.err
    assert not state.exists()

    assert (await cli("migrate")).status == 0
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700
    health = await cli("--json", "health")
    assert health.json()["database"] == server_database.masked()


@pytest_twisted.ensureDeferred
async def test_the_default_follows_xdg_state_home_and_runtara_database_url(cli, environ, tmp_path):
    environ["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    assert (await cli("migrate")).status == 0
    assert (tmp_path / "xdg" / "runtara" / "runtara.db").exists()
    environ["RUNTARA_DATABASE_URL"] = f"sqlite://{tmp_path}/elsewhere.db"
    assert (await cli("migrate")).status == 0
    health = await cli("--json", "health")
    assert health.json()["database"] == f"sqlite://{tmp_path}/elsewhere.db"
    given = await cli("--json", "--database", f"sqlite:{tmp_path}/xdg/runtara/runtara.db", "health")
    assert given.json()["database"] == f"sqlite://{tmp_path}/xdg/runtara/runtara.db"


@pytest_twisted.ensureDeferred
async def test_read_commands_never_create_a_sqlite_database(cli, tmp_path):
    target = tmp_path / "absent.db"
    for argv in (("health",), ("instances", "list"), ("signal", "i-1", "cancel")):
        outcome = await cli("--database", f"sqlite://{target}", *argv)
        assert_one_line_failure(outcome, 1)
        assert "no database at" in outcome.err
    nowhere = await cli("--database", f"sqlite://{tmp_path}/missing/runtara.db", "migrate")
    assert_one_line_failure(nowhere, 1)
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2_before_any_reactor(capsys):
    assert main(["purge", "--older-than", "2 days"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid duration '2 days'" in err
    assert main([]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("runtara ")


# -- black box: exit statuses and one-line errors, as a subprocess ---------------------------


FAILURES = [
    pytest.param(("instances", "show", "nope"), 1, "Instance 'nope' not found", id="unknown"),
    pytest.param(("events", "list", "nope"), 1, "Instance 'nope' not found", id="unknown-events"),
    pytest.param(("signal", "done", "cancel"), 1, "invalid state", id="terminal"),
    pytest.param(
        ("instances", "create", "done", "--tenant", "t"), 1, "already exists", id="exists"
    ),
    pytest.param(
        ("custom-signal", "live", "cp", "--payload-file", "absent.bin"),
        1,
        "cannot read payload file 'absent.bin'",
        id="payload-file",
    ),
    pytest.param(("checkpoints", "get", "live", "nope"), 1, "not found", id="checkpoint"),
    pytest.param(("purge", "--older-than", "30x"), 2, "invalid duration", id="duration-unit"),
    pytest.param(("purge", "--older-than", "7"), 2, "invalid duration", id="duration-no-unit"),
    pytest.param(("purge", "--older-than", "1h30m"), 2, "invalid duration", id="duration-two"),
    pytest.param(("purge", "--older-than", "-1d"), 2, "--older-than", id="duration-negative"),
    pytest.param(("purge",), 2, "--older-than", id="missing-age"),
    pytest.param(("frobnicate",), 2, "invalid choice", id="unknown-command"),
    pytest.param(("instances", "show"), 2, "required", id="missing-argument"),
    pytest.param(("instances", "create", "x"), 2, "--tenant", id="missing-tenant"),
    pytest.param(("instances", "list", "--limit", "ten"), 2, "--limit", id="limit-text"),
    pytest.param(("instances", "list", "--limit", "0"), 2, "--limit", id="limit-zero"),
    pytest.param(("instances", "list", "--frobnicate"), 2, "unrecognized", id="unknown-option"),
    pytest.param(("signal", "live", "explode"), 2, "invalid choice", id="signal-type"),
]


@pytest.mark.parametrize(("argv", "status", "reason"), FAILURES)
@pytest_twisted.ensureDeferred
async def test_failures_exit_with_one_line_and_write_nothing(
    database, seeder, environ, tmp_path, argv, status, reason
):
    await seeder.running("live")
    await seeder.finished("done")
    before = await database.snapshot()
    outcome = subprocess_runtara("--database", database.text, *argv, environ=environ, cwd=tmp_path)
    assert_one_line_failure(outcome, status)
    assert reason in outcome.err
    assert await database.snapshot() == before


DATABASE_FAILURES = [
    pytest.param("mysql://root@localhost/db", "unsupported database URL scheme", id="scheme"),
    pytest.param("not a url", "not a database URL", id="not-a-url"),
    pytest.param(
        "postgresql://root:s3cret-pass@127.0.0.1:{port}/postgres",
        "connection refused",
        id="pg-down",
    ),
    pytest.param("sqlite:///{tmp}/missing/runtara.db", "no database at", id="sqlite-no-dir"),
    pytest.param("sqlite:absent.db", "no database at", id="sqlite-no-file"),
]


@pytest.mark.parametrize(("url", "reason"), DATABASE_FAILURES)
def test_unusable_databases_exit_1_with_one_line(url, reason, environ, tmp_path):
    text = url.format(port=free_port(), tmp=tmp_path)
    for argv in (("--database", text, "instances", "list"), ("--database", text, "health")):
        outcome = subprocess_runtara(*argv, environ=environ, cwd=tmp_path)
        assert_one_line_failure(outcome, 1)
        assert reason in outcome.err
        assert "s3cret-pass" not in outcome.err
    from_environment = subprocess_runtara(
        "health", environ={**environ, "RUNTARA_DATABASE_URL": text}, cwd=tmp_path
    )
    assert_one_line_failure(from_environment, 1)
    assert list(tmp_path.iterdir()) == []


def test_a_command_that_succeeds_as_a_subprocess(environ, tmp_path):
    environ["RUNTARA_STATE_DIR"] = str(tmp_path / "state")
    migrated = subprocess_runtara("migrate", environ=environ, cwd=tmp_path)
    assert migrated.status == 0 and migrated.err == "", migrated
    created = subprocess_runtara(
        "instances", "create", "i-1", "--tenant", "t", environ=environ, cwd=tmp_path
    )
    assert created.status == 0, created
    listed = subprocess_runtara("--json", "instances", "list", environ=environ, cwd=tmp_path)
    assert listed.status == 0 and listed.err == ""
    assert [item["instance_id"] for item in json.loads(listed.out)["instances"]] == ["i-1"]
    signalled = subprocess_runtara(
        "--json",
        "custom-signal",
        "i-1",
        "gate",
        "--payload-file",
        "-",
        environ=environ,
        cwd=tmp_path,
        stdin="from stdin",
    )
    assert json.loads(signalled.out)["payload"] == "from stdin", signalled
    purged = subprocess_runtara("purge", "--older-than", "0s", environ=environ, cwd=tmp_path)
    assert purged.status == 0 and purged.out.startswith("deleted 0 instances"), purged


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_one_line_and_the_database_is_closed(
    capsys, environ, database
):
    from twisted.internet import reactor

    used: list[Admin] = []

    async def broken(admin: Admin, arguments: Any, output: Output) -> int:
        used.append(admin)
        assert await admin.persistence.check_health()
        raise RuntimeError("boom")

    arguments = build_parser().parse_args(["--database", database.text, "health"])
    arguments.command = Command(broken, needs_schema=False)
    output = Output(sys.stdout, sys.stderr, as_json=False)
    status = await execute(arguments, reactor, output, environ)
    captured = capsys.readouterr()
    assert (status, captured.out) == (1, "")
    assert captured.err == "runtara: error: internal error: RuntimeError: boom\n"
    assert not await used[0].persistence.check_health()


# -- end to end: signals sent with the CLI reach a running server's instances --------------


@pytest_twisted.async_yield_fixture(params=ENGINES)
async def served(request: pytest.FixtureRequest, tmp_path: Path, environ: dict[str, str]) -> Any:
    """A running runtara-core, and the ``runtara`` arguments that reach its database.

    SQLite: the server's default embedded database, found by the CLI through
    the same ``RUNTARA_STATE_DIR``. PostgreSQL: a fresh database for both.
    """
    from twisted.internet import reactor

    from tests.e2e.support import Servers

    state = tmp_path / "state"
    environ["RUNTARA_STATE_DIR"] = str(state)
    postgres = None
    database_argv: list[str] = []
    if request.param == "postgresql":
        from tests.pg import create_database

        postgres = await create_database(reactor)
        database_argv = ["--database", postgres.dsn]
    servers = Servers(reactor, state, None if postgres is None else postgres.dsn)
    core = await servers.start()
    client = await servers.connect(core)
    yield client, database_argv
    await servers.close_all()
    if postgres is not None:
        await postgres.drop()


async def checkpoint(client: Any, instance_id: str, checkpoint_id: str) -> dict[str, Any]:
    return await client.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": checkpoint_id, "state": b"s"}
    )


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_a_signal_sent_with_the_cli_reaches_the_instance_at_its_next_checkpoint(cli, served):
    client, database_argv = served
    await client.call("register_instance", {"instance_id": "wf-1", "tenant_id": "t"})
    first = await checkpoint(client, "wf-1", "a")
    assert "pending_signal" not in first
    sent = await cli(*database_argv, "signal", "wf-1", "pause", "--payload", "maintenance")
    assert sent.status == 0, sent
    answer = await checkpoint(client, "wf-1", "b")
    assert answer["pending_signal"] == {"signal_type": "pause", "payload": b"maintenance"}
    shown = await cli(*database_argv, "--json", "instances", "show", "wf-1")
    assert shown.json()["pending_signal"] == {"signal_type": "pause", "payload": "maintenance"}


@pytest.mark.e2e
@pytest_twisted.ensureDeferred
async def test_a_custom_signal_sent_early_is_delivered_when_the_instance_gets_there(cli, served):
    client, database_argv = served
    await client.call("register_instance", {"instance_id": "wf-2", "tenant_id": "t"})
    sent = await cli(*database_argv, "custom-signal", "wf-2", "approval", "--payload", "approved")
    assert sent.status == 0, sent
    before = await checkpoint(client, "wf-2", "prepare")
    assert "custom_signal" not in before
    at_approval = await checkpoint(client, "wf-2", "approval")
    assert at_approval["custom_signal"] == {"checkpoint_id": "approval", "payload": b"approved"}
