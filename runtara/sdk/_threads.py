"""The reactor in a background thread, and calls across the two threads.

Plain (blocking) programs use the SDK through the global Twisted reactor,
started once in a daemon thread (``threading.Thread(target=reactor.run,
kwargs={"installSignalHandlers": False})``) and stopped at interpreter exit.

``Bridge.run`` starts a coroutine in the reactor thread and blocks the
calling thread until it ends, like ``blockingCallFromThread``, with one
addition: while it waits, the calling thread runs the functions the
coroutine hands back with ``Bridge.in_caller``. That is how a blocking
workflow's steps run in the script's own thread while the durable logic
(replay, retries, checkpoints) runs in the reactor.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

__all__ = ["Bridge", "ReactorThread"]

_T = TypeVar("_T")

_STOP_TIMEOUT = 5.0
"""Seconds to wait for the reactor thread to end at interpreter exit."""


class ReactorThread:
    """The global reactor running in a daemon thread (one per process)."""

    _lock = threading.Lock()
    _instance: ReactorThread | None = None

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="runtara-reactor",
            daemon=True,
        )

    @classmethod
    def shared(cls) -> ReactorThread:
        """The process's reactor thread, started on first use.

        Raises ``RuntimeError`` if the global reactor already runs elsewhere
        (inside a Twisted program, use the Deferred API instead).
        """
        with cls._lock:
            if cls._instance is None:
                from twisted.internet import reactor

                thread = cls(reactor)
                thread.start()
                cls._instance = thread
            return cls._instance

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def start(self) -> None:
        """Run the reactor in the thread; return once it runs."""
        if self.reactor.running:
            raise RuntimeError(
                "the Twisted reactor already runs in this process: use the Deferred API"
                " (runtara.sdk.run_workflow) instead of the blocking one"
            )
        running = threading.Event()
        self.reactor.callWhenRunning(running.set)
        self._thread.start()
        running.wait()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the reactor and wait (a few seconds at most) for the thread to end."""
        if self._thread.is_alive():
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(_STOP_TIMEOUT)


class Bridge:
    """Blocking calls into a reactor running in another thread."""

    def __init__(self, reactor_thread: ReactorThread) -> None:
        self._reactor_thread = reactor_thread
        self._reactor = reactor_thread.reactor
        self._local = threading.local()

    @classmethod
    def shared(cls) -> Bridge:
        """A bridge to the process's shared reactor thread."""
        return cls(ReactorThread.shared())

    @property
    def reactor(self) -> Any:
        return self._reactor

    def run(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``make()`` in the reactor thread; block until it ends; its result.

        Its exception, if any, is raised here. Must not be called from the
        reactor thread itself.
        """
        if threading.get_ident() == self._reactor_thread.ident:
            raise RuntimeError("blocking SDK calls cannot be made from the reactor thread")
        inbox = self._inbox()
        done = object()

        def start() -> None:
            finished: Deferred[_T] = ensureDeferred(_awaited(make))
            finished.addBoth(lambda result: inbox.put((done, result)))

        self._reactor.callFromThread(start)
        while True:
            tag, value = inbox.get()
            if tag is done:
                if isinstance(value, Failure):
                    value.raiseException()
                return value
            if tag is None:
                value()
            # Otherwise: the late result of a call an interrupt (Ctrl-C) abandoned; dropped.

    def in_caller(self, fn: Callable[..., Any]) -> Callable[..., Deferred[Any]]:
        """Wrap ``fn`` (in the calling thread) so the reactor can have it run here.

        The wrapper, called in the reactor thread, returns a Deferred that
        fires with ``fn``'s result once the calling thread, blocked in
        ``run``, has run it.
        """
        inbox = self._inbox()
        reactor = self._reactor

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            result: Deferred[Any] = Deferred()

            def run_here() -> None:
                try:
                    value = fn(*args, **kwargs)
                except BaseException:
                    reactor.callFromThread(result.errback, Failure())
                else:
                    reactor.callFromThread(result.callback, value)

            inbox.put((None, run_here))
            return result

        return call

    def _inbox(self) -> queue.SimpleQueue[tuple[object, Any]]:
        """The calling thread's queue of results and functions to run."""
        inbox = getattr(self._local, "inbox", None)
        if inbox is None:
            inbox = self._local.inbox = queue.SimpleQueue()
        return inbox


async def _awaited(make: Callable[[], Awaitable[_T]]) -> _T:
    return await make()
