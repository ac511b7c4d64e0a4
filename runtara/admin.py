"""Management of a runtara database, as a Twisted API over ``IPersistence``.

This is what the ``runtara`` command (``runtara.cli``) is built on, and what
any other Twisted program can use to manage instances through the shared
persistence (PROTOCOL.md section 7: what it writes, the server sees at once)::

    admin = await open_admin(parse_database_url(url), reactor)
    try:
        await admin.require_current_schema()
        page = await admin.list_instances(status=Status.RUNNING)
        await admin.send_signal("i-1", SignalType.CANCEL, b"")
    finally:
        await admin.close()

Every method returns a Deferred. The persistence enforces the protocol's
rules (an unknown instance is ``InstanceNotFound``, a signal to a terminal
instance is ``InvalidInstanceState``, ...); this layer only adds paging,
the schema check and batched purging. Operators' problems that are not the
protocol's (no database file yet, a schema to migrate) are ``AdminError``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from runtara.database_url import DatabaseURL
from runtara.errors import CheckpointNotFound, SchemaTooNew
from runtara.interfaces import IPersistence
from runtara.model import (
    CheckpointInfo,
    EventRecord,
    EventType,
    InstanceDetails,
    InstanceRecord,
    SignalType,
    Status,
)
from runtara.persistence import open_persistence
from runtara.persistence.migrations import load_migrations

DEFAULT_PURGE_BATCH = 500
"""How many instances ``purge`` deletes per transaction."""

STATUS_ORDER: tuple[Status, ...] = (
    Status.PENDING,
    Status.RUNNING,
    Status.SUSPENDED,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
)
"""The statuses an instance can be stored with, in lifecycle order."""

MIGRATE_HINT = "run `runtara migrate` (or start the server)"
"""What to do about a database that is missing or not migrated."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _deferred(
    function: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Deferred[_T]]:
    """Make a coroutine function return a Deferred, as Twisted callers expect."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return Deferred.fromCoroutine(function(*args, **kwargs))

    return wrapper


class AdminError(Exception):
    """A management operation cannot be done; ``str()`` is one line for operators."""


class NoDatabase(AdminError):
    """The SQLite database file does not exist (and may not be created here)."""


class SchemaOutdated(AdminError):
    """The database has not been migrated to this runtara's schema yet."""

    def __init__(self, database_version: int, code_version: int) -> None:
        super().__init__(
            f"database schema version {database_version} is older than this runtara's "
            f"({code_version}): {MIGRATE_HINT}"
        )
        self.database_version = database_version
        self.code_version = code_version


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of a listing.

    ``total`` is the number of items of the whole listing, or None when it is
    not known (filtered events); ``has_more`` says whether items follow this page.
    """

    items: list[_T]
    offset: int
    limit: int
    total: int | None
    has_more: bool


@dataclass(frozen=True)
class InstanceSlice:
    """Instances newest first from a position on, with the counts a listing shows.

    ``counts`` holds every status of ``STATUS_ORDER`` for the tenant asked
    (zero included), whatever status was asked; ``after`` is the position
    the next slice starts from, None when nothing follows.
    """

    items: list[InstanceRecord]
    counts: Mapping[Status, int]
    after: tuple[int, str] | None
    status: Status | None

    @property
    def total(self) -> int:
        """How many instances the whole listing holds."""
        if self.status is None:
            return sum(self.counts.values())
        return self.counts[self.status]


@dataclass(frozen=True)
class Health:
    """What ``Admin.health`` found.

    ``schema_version`` is None and ``counts`` empty when the database cannot
    be reached; ``counts`` is also empty while the schema is not current.
    ``counts`` holds every status of ``STATUS_ORDER``, zero included.
    """

    database: str
    reachable: bool
    schema_version: int | None
    code_schema_version: int
    counts: Mapping[Status, int] = field(default_factory=dict)

    @property
    def schema_current(self) -> bool:
        """Whether the database is at exactly this runtara's schema version."""
        return self.schema_version == self.code_schema_version


@dataclass(frozen=True)
class MigrationResult:
    """What ``Admin.migrate`` did: the version before and after."""

    previous_version: int
    version: int

    @property
    def applied(self) -> int:
        """How many migrations were applied."""
        return self.version - self.previous_version


@dataclass(frozen=True)
class PurgeResult:
    """What ``Admin.purge`` did, or would do with ``dry_run``.

    ``count`` is how many instances were deleted (would be, in a dry run);
    they are the terminal instances that finished before ``finished_before_ms``.
    """

    finished_before_ms: int
    count: int
    dry_run: bool


PurgeProgress = Callable[[int, int], None]
"""``on_progress(deleted_so_far, expected_total)``, called after each purge batch."""


def code_schema_version(url: DatabaseURL) -> int:
    """The schema version this runtara's migrations reach on ``url``'s engine."""
    return load_migrations(url.engine)[-1].version


class Admin:
    """Management operations on the database behind ``persistence``.

    ``persistence`` must be started; ``clock`` gives "now" for ``purge``;
    ``url`` is the database it works on (shown masked by ``health``).
    """

    def __init__(self, persistence: IPersistence, clock: IReactorTime, url: DatabaseURL) -> None:
        self.persistence = persistence
        self.url = url
        self._clock = clock

    def close(self) -> Deferred[None]:
        """Close the persistence. Fires with None."""
        return self.persistence.close()

    @_deferred
    async def health(self) -> Health:
        """Fire with a ``Health``; never fails because the database is down."""
        code_version = code_schema_version(self.url)
        unreachable = Health(self.url.masked(), False, None, code_version)
        if not await self.persistence.check_health():
            return unreachable
        version = await self.persistence.schema_version()
        counts: dict[Status, int] = {}
        if version == code_version:
            found = await self.persistence.count_by_status()
            counts = {status: found.get(status, 0) for status in STATUS_ORDER}
        return Health(self.url.masked(), True, version, code_version, counts)

    @_deferred
    async def require_current_schema(self) -> None:
        """Fire with None when the schema is current.

        Fails with ``SchemaOutdated`` when migrations are pending and with
        ``SchemaTooNew`` when a newer runtara migrated the database.
        """
        version = await self.persistence.schema_version()
        code_version = code_schema_version(self.url)
        if version < code_version:
            raise SchemaOutdated(version, code_version)
        if version > code_version:
            raise SchemaTooNew(version, code_version)

    @_deferred
    async def migrate(self) -> MigrationResult:
        """Apply the pending migrations. Fire with a ``MigrationResult``.

        Fails with ``SchemaTooNew`` when the database is newer than the code.
        """
        previous = await self.persistence.schema_version()
        version = await self.persistence.migrate()
        return MigrationResult(previous, version)

    @_deferred
    async def list_instances(
        self,
        tenant: str | None = None,
        status: Status | str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[InstanceRecord]:
        """Fire with a page of instances, newest first, filtered when given."""
        _check_page(limit, offset)
        wanted = None if status is None else Status(status)
        total = await self.persistence.count_instances(tenant, wanted)
        rows = await self.persistence.list_instances(tenant, wanted, limit, offset)
        return Page(rows, offset, limit, total, offset + len(rows) < total)

    @_deferred
    async def browse_instances(
        self,
        tenant: str | None = None,
        status: Status | str | None = None,
        limit: int = 50,
        after: tuple[int, str] | None = None,
    ) -> InstanceSlice:
        """Fire with up to ``limit`` instances, newest first, after the position ``after``
        (an ``InstanceSlice.after``, or None for the newest), filtered when given.

        Unlike offsets, positions skip and repeat nothing while instances are created.
        """
        _check_page(limit, 0)
        wanted = None if status is None else Status(status)
        rows = await self.persistence.list_instances_after(tenant, wanted, after, limit + 1)
        found = await self.persistence.count_by_status(tenant)
        counts = {status: found.get(status, 0) for status in STATUS_ORDER}
        items = rows[:limit]
        more = len(rows) > limit
        position = (items[-1].created_at_ms, items[-1].instance_id) if more else None
        return InstanceSlice(items, counts, position, wanted)

    def show_instance(self, instance_id: str) -> Deferred[InstanceDetails]:
        """Fire with the instance, its pending signal and counts. ``InstanceNotFound``."""
        return self.persistence.get_instance(instance_id)

    def create_instance(self, instance_id: str, tenant: str) -> Deferred[InstanceRecord]:
        """Create an instance in ``pending``. ``InstanceAlreadyExists`` if the id is taken."""
        return self.persistence.create_instance(instance_id, tenant)

    @_deferred
    async def list_checkpoints(
        self, instance_id: str, limit: int = 50, offset: int = 0
    ) -> Page[CheckpointInfo]:
        """Fire with a page of the instance's checkpoints, newest first. ``InstanceNotFound``."""
        _check_page(limit, offset)
        details = await self.persistence.get_instance(instance_id)
        rows = await self.persistence.list_checkpoints(instance_id, limit, offset)
        total = details.checkpoint_count
        return Page(rows, offset, limit, total, offset + len(rows) < total)

    @_deferred
    async def get_checkpoint(self, instance_id: str, checkpoint_id: str) -> bytes:
        """Fire with the stored state. ``InstanceNotFound``, ``CheckpointNotFound``."""
        state = await self.persistence.get_checkpoint(instance_id, None, checkpoint_id)
        if state is None:
            raise CheckpointNotFound(instance_id, checkpoint_id)
        return state

    @_deferred
    async def list_events(
        self,
        instance_id: str,
        event_type: EventType | str | None = None,
        subtype: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[EventRecord]:
        """Fire with a page of the instance's events, newest first. ``InstanceNotFound``.

        The total is known only without filters.
        """
        _check_page(limit, offset)
        wanted = None if event_type is None else EventType(event_type)
        details = await self.persistence.get_instance(instance_id)
        rows = await self.persistence.list_events(instance_id, wanted, subtype, limit + 1, offset)
        unfiltered = wanted is None and subtype is None
        total = details.event_count if unfiltered else None
        return Page(rows[:limit], offset, limit, total, len(rows) > limit)

    def send_signal(
        self, instance_id: str, signal_type: SignalType | str, payload: bytes = b""
    ) -> Deferred[None]:
        """Make ``signal_type`` the pending instance-wide signal (PROTOCOL.md section 7).

        Replaces an older signal. ``InstanceNotFound``; ``InvalidInstanceState``
        for a terminal instance.
        """
        return self.persistence.send_signal(instance_id, SignalType(signal_type), payload)

    def send_custom_signal(
        self, instance_id: str, checkpoint_id: str, payload: bytes = b""
    ) -> Deferred[None]:
        """Make ``payload`` the custom signal waiting at (id, cp); the newest wins.

        It is delivered when the instance reaches that checkpoint (PROTOCOL.md
        section 7). ``InstanceNotFound``; ``InvalidInstanceState`` for a
        terminal instance (nobody could receive it).
        """
        return self.persistence.send_custom_signal(instance_id, checkpoint_id, payload)

    @_deferred
    async def purge(
        self,
        older_than_seconds: int,
        dry_run: bool = False,
        on_progress: PurgeProgress | None = None,
        batch_size: int = DEFAULT_PURGE_BATCH,
    ) -> PurgeResult:
        """Delete the terminal instances that finished more than ``older_than_seconds`` ago.

        Their checkpoints, events and signals go with them. Deletes in
        transactions of ``batch_size`` instances until none is left, calling
        ``on_progress`` after each; ``dry_run`` only counts them.
        """
        if older_than_seconds < 0 or batch_size < 1:
            raise ValueError("older_than_seconds must be >= 0 and batch_size >= 1")
        now_ms = int(self._clock.seconds() * 1000)
        cutoff_ms = max(0, now_ms - older_than_seconds * 1000)
        expected = await self.persistence.count_purgeable(cutoff_ms)
        if dry_run:
            return PurgeResult(cutoff_ms, expected, dry_run=True)
        deleted = 0
        while True:
            batch = await self.persistence.purge_finished(cutoff_ms, batch_size)
            if batch == 0:
                return PurgeResult(cutoff_ms, deleted, dry_run=False)
            deleted += batch
            if on_progress is not None:
                on_progress(deleted, max(expected, deleted))


def _check_page(limit: int, offset: int) -> None:
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit} and {offset}")


@_deferred
async def open_admin(
    url: DatabaseURL,
    reactor: Any,
    *,
    clock: IReactorTime | None = None,
    create: bool = False,
    pool_size: int = 1,
) -> Admin:
    """Start a persistence on ``url`` and fire with an ``Admin`` over it.

    A SQLite file that does not exist is created only with ``create`` and
    only in an existing directory, else this fails with ``NoDatabase``
    before anything is written. ``clock`` defaults to ``reactor``. Fails
    with ``DatabaseError`` when the database cannot be opened.
    """
    if url.sqlite_path is not None:
        _check_sqlite_file(url, url.sqlite_path, create)
    persistence = open_persistence(url, clock or reactor, reactor, pool_size=pool_size)
    try:
        await persistence.start()
    except BaseException:
        await persistence.close()
        raise
    return Admin(persistence, clock or reactor, url)


def _check_sqlite_file(url: DatabaseURL, path: Path, create: bool) -> None:
    """Refuse a missing SQLite file unless it may be created, in an existing directory."""
    if path.exists():
        return
    if not create:
        raise NoDatabase(f"no database at {url.masked()}: {MIGRATE_HINT} to create it")
    if not path.parent.is_dir():
        raise NoDatabase(
            f"cannot create the database {url.masked()}: directory {path.parent} does not exist"
        )
