"""How SQLite transactions run: blocking bodies in the pool thread, committed in groups.

A transaction body (``runtara.persistence.transaction``) is an ``async``
function; over ``BlockingTransaction`` none of its awaits ever suspends, so
``run_to_completion`` runs it in one step, in the pool's thread, with the
connection to itself.

``GroupCommitter`` runs the operations that queue up while the connection is
busy in one transaction, each inside its own savepoint: a burst of
operations pays for one ``fsync``, each operation stays all-or-nothing, and
every caller is answered only after the ``COMMIT`` that made its writes
durable.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from runtara.persistence.transaction import Body, Dialect, Row

_T = TypeVar("_T")

WRITE = "BEGIN IMMEDIATE"
READ = "BEGIN"


class BlockingTransaction:
    """The transaction API over a blocking ``sqlite3`` connection (pool thread only)."""

    def __init__(self, db: sqlite3.Connection, dialect: Dialect, now_ms: int) -> None:
        self._db = db
        self.dialect = dialect
        self.now_ms = now_ms

    async def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        # fetchall() steps a statement to its end, RETURNING clauses included.
        return self._db.execute(sql, parameters).fetchall()

    async def row(self, sql: str, parameters: Sequence[Any] = ()) -> Row | None:
        rows = await self.rows(sql, parameters)
        return rows[0] if rows else None

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> int:
        return int(self._db.execute(sql, parameters).rowcount)

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        # In-process: nothing to save by holding it back.
        self._db.execute(sql, parameters)

    async def script(self, sql: str) -> None:
        # Not executescript(): it commits before it runs.
        for statement in split_statements(sql):
            self._db.execute(statement)


def run_to_completion(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that never suspends (a body over ``BlockingTransaction``)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: _T = stop.value
        return result
    coroutine.close()
    raise RuntimeError("a transaction body awaited something other than its transaction")


def split_statements(script: str) -> list[str]:
    """The statements of ``script``, cut at the semicolons that complete one.

    ``sqlite3.complete_statement`` knows about strings, comments and trigger
    bodies, so a semicolon inside them does not cut.
    """
    statements = []
    start = 0
    for end, character in enumerate(script):
        if character == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statements.append(script[start : end + 1])
            start = end + 1
    if script[start:].strip():
        statements.append(script[start:])
    return statements


@dataclass
class Operation:
    """One queued transaction body and its caller's Deferred."""

    begin: str
    """``WRITE`` or ``READ``: the transaction this body needs."""
    body: Body[Any]
    args: tuple[Any, ...]
    now_ms: int
    done: Deferred[Any] = field(default_factory=Deferred)


class GroupCommitter:
    """Runs operations on the pool's one connection, many per transaction.

    The rule: at most one pool call runs at a time. An operation submitted
    while one runs waits in a queue on the reactor thread; when the running
    call ends, every waiting operation (up to ``max_batch``, in arrival
    order) goes to the pool thread in one call that runs them in one
    transaction: ``BEGIN IMMEDIATE`` (``BEGIN`` if none of them writes), then
    for each one ``SAVEPOINT``, its body and ``RELEASE``, or on any exception
    from the body ``ROLLBACK TO`` and ``RELEASE``, which undoes that
    operation alone and keeps its exception as its answer; then one
    ``COMMIT``. Only after the ``COMMIT`` succeeded is any operation of the
    batch answered (its result or its own exception). If ``BEGIN`` or
    ``COMMIT`` fails, or an error ends the whole transaction, the
    transaction is rolled back and every operation of the batch fails with
    that error: nothing of the batch is written.

    Nothing waits for company: an operation submitted while the connection
    is idle starts at once, alone. A batch of one needs no savepoint (the
    transaction's rollback is the operation's own), so it runs as a plain
    transaction, and its exception is its answer.

    ``on_batch(size)`` is called after each committed transaction with the
    number of operations it held.

    ``close`` stops taking operations, lets the queued ones run and be
    answered, then closes the pool and calls ``on_closed``.
    """

    _log = Logger()

    def __init__(
        self,
        pool: ConnectionPool,
        dialect: Dialect,
        on_closed: Callable[[GroupCommitter], None],
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._dialect = dialect
        self._on_closed = on_closed
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: deque[Operation] = deque()
        self._running = False
        self._closed_waiters: list[Deferred[None]] | None = None
        self._closed = False

    @property
    def closing(self) -> bool:
        """Whether ``close`` was called (the engine submits nothing more)."""
        return self._closed_waiters is not None or self._closed

    def submit(self, operation: Operation) -> Deferred[Any]:
        """Queue ``operation``; its ``done`` fires with the outcome once committed."""
        self._queue.append(operation)
        self._next()
        return operation.done

    def close(self) -> Deferred[None]:
        """Fire with None once every queued operation was answered and the pool closed."""
        if self._closed:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        if self._closed_waiters is None:
            self._closed_waiters = []
        self._closed_waiters.append(closed)
        self._close_if_drained()
        return closed

    def _next(self) -> None:
        """Start the next pool call, unless one runs or nothing waits."""
        if self._running or not self._queue:
            return
        batch = [self._queue.popleft()]
        while self._queue and len(batch) < self._max_batch:
            batch.append(self._queue.popleft())
        self._running = True
        ran = self._pool.runWithConnection(_run_batch, self._dialect, batch)
        ran.addCallbacks(
            self._committed, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _committed(self, outcomes: list[Any], batch: list[Operation]) -> None:
        # The next batch starts before this one's callers are answered, so the
        # pool thread works while the reactor thread runs their callbacks.
        self._running = False
        if self._on_batch is not None:
            self._on_batch(len(batch))
        self._next()
        for operation, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Failure):
                operation.done.errback(outcome)
            else:
                operation.done.callback(outcome)
        self._close_if_drained()

    def _batch_failed(self, failure: Failure, batch: list[Operation]) -> None:
        self._running = False
        if len(batch) > 1:
            self._log.warn(
                "group commit of {count} operations failed, none of them was written: {error}",
                count=len(batch),
                error=type(failure.value).__name__,
            )
        self._next()
        for operation in batch:
            operation.done.errback(failure)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        """Close the pool and answer ``close`` once closing and nothing runs or waits."""
        if self._closed_waiters is None or self._running or self._queue:
            return
        waiters, self._closed_waiters = self._closed_waiters, None
        self._closed = True
        self._pool.close()
        self._on_closed(self)
        for waiter in waiters:
            waiter.callback(None)


# -- in the pool thread -----------------------------------------------------------------


def _run_batch(db: sqlite3.Connection, dialect: Dialect, batch: list[Operation]) -> list[Any]:
    """Run ``batch`` in one transaction; return each one's result or ``Failure``.

    A batch of one runs as a plain transaction whose exception is raised (its
    rollback undoes it); a larger one runs each body in its own savepoint (see
    ``GroupCommitter``). Raises, after rolling everything back, if the
    transaction itself fails.
    """
    begin = WRITE if any(operation.begin == WRITE for operation in batch) else READ
    db.execute(begin)
    try:
        if len(batch) == 1:
            outcomes = [_run_body(db, dialect, batch[0])]
        else:
            outcomes = [_in_savepoint(db, dialect, operation) for operation in batch]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return outcomes


def _run_body(db: sqlite3.Connection, dialect: Dialect, operation: Operation) -> Any:
    transaction = BlockingTransaction(db, dialect, operation.now_ms)
    return run_to_completion(operation.body(transaction, *operation.args))


def _in_savepoint(db: sqlite3.Connection, dialect: Dialect, operation: Operation) -> Any:
    """The body's result, or its exception as a ``Failure`` with its writes undone.

    Re-raises instead when the error ended the whole transaction (SQLite
    rolls back on its own after e.g. a full disk or an I/O error), since the
    batch's earlier operations are then gone too.
    """
    db.execute("SAVEPOINT operation")
    try:
        result = _run_body(db, dialect, operation)
    except Exception:
        if not db.in_transaction:
            raise
        failure = Failure()
        db.execute("ROLLBACK TO operation")
        db.execute("RELEASE operation")
        return failure
    db.execute("RELEASE operation")
    return result
