"""Numbered SQL migrations and the rules of the migration ledger.

Migration files live in ``sql/<dialect>/NNNN_name.sql`` in the source
checkout; the wheel carries the same files as the package data
``runtara/sql/<dialect>/`` (see ``setup.cfg``). Each provider applies the
pending files in order, each in its own transaction together with its ledger
row, and refuses a database whose ledger is ahead of the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from runtara.errors import SchemaTooNew

LEDGER_TABLE = "runtara_schema_migrations"
"""Holds one row (version, name, applied_at) per applied migration."""

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _migration_dir(dialect: str) -> Traversable:
    try:
        return resources.files("runtara.sql").joinpath(dialect)
    except ModuleNotFoundError:
        # Running from a source checkout: the files sit beside the package.
        return Path(__file__).resolve().parents[2] / "sql" / dialect


def load_migrations(dialect: str, directory: Traversable | None = None) -> list[Migration]:
    """Every migration of ``dialect`` ("sqlite" or "postgresql"), in order.

    ``directory`` replaces ``sql/<dialect>/`` (tests use it). Raises
    ``ValueError`` when the files are missing or their versions do not run
    1, 2, 3, ... without a gap.
    """
    if directory is None:
        directory = _migration_dir(dialect)
    if not directory.is_dir():
        raise ValueError(f"no migrations for {dialect!r}: {directory} is not a directory")
    found = []
    for entry in directory.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if not versions or versions != list(range(1, len(found) + 1)):
        raise ValueError(
            f"migrations for {dialect!r} must be numbered 1..n without gaps, found {versions}"
        )
    return found


def pending_migrations(migrations: list[Migration], applied_version: int) -> list[Migration]:
    """The migrations still to apply on a database at ``applied_version``.

    Raises ``SchemaTooNew`` when the database is ahead of the code.
    """
    latest = migrations[-1].version if migrations else 0
    if applied_version > latest:
        raise SchemaTooNew(applied_version, latest)
    return [migration for migration in migrations if migration.version > applied_version]
