"""Persistence providers of ``runtara.interfaces.IPersistence``.

``open_persistence`` picks the provider for a database URL; providers are
imported lazily so the SQLite default never loads the PostgreSQL driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from runtara.config import DEFAULT_DB_LOCK_TIMEOUT_MS, DEFAULT_DB_STATEMENT_TIMEOUT_MS
from runtara.database_url import DatabaseURL
from runtara.interfaces import IPersistence

if TYPE_CHECKING:
    from runtara.metrics import Metrics


def open_persistence(
    url: DatabaseURL,
    clock: IReactorTime,
    reactor: Any,
    *,
    pool_size: int = 8,
    lock_timeout_ms: int = DEFAULT_DB_LOCK_TIMEOUT_MS,
    statement_timeout_ms: int = DEFAULT_DB_STATEMENT_TIMEOUT_MS,
    metrics: Metrics | None = None,
) -> IPersistence:
    """Build (not start) the provider for ``url``.

    ``pool_size`` and the two timeouts (milliseconds, 0 for none) are
    PostgreSQL's; SQLite has one connection and no such settings.
    ``metrics`` observes every transaction.
    """
    if url.engine == "sqlite":
        from runtara.persistence.sqlite import SQLitePersistence

        return SQLitePersistence(url.sqlite_path, clock, reactor=reactor, metrics=metrics)
    from runtara.persistence.postgresql import PostgreSQLPersistence

    return PostgreSQLPersistence(
        url.postgres_dsn,
        clock,
        pool_size=pool_size,
        reactor=reactor,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
        metrics=metrics,
    )
