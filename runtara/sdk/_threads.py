"""The reactor in a background thread, and calls across the two threads.

Plain (blocking) programs use the SDK through the global Twisted reactor,
started once in a daemon thread (``threading.Thread(target=reactor.run,
kwargs={"installSignalHandlers": False})``) and stopped at interpreter exit.

``Bridge.run`` starts a coroutine in the reactor thread and blocks the
calling thread until it ends, like ``blockingCallFromThread``, with one
addition: while it waits, the calling thread runs the functions the
coroutine hands back through the ``here`` wrapper ``run`` gives it. That is
how a blocking workflow's steps run in the script's own thread while the
durable logic (replay, retries, checkpoints) runs in the reactor.

Ctrl-C (``KeyboardInterrupt``) in a blocked ``run`` cancels the coroutine's
Deferred in the reactor thread and is raised in the calling thread; what
the abandoned call leaves behind (its result, functions it handed back) is
dropped, never mistaken for the result of another call.
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

Here = Callable[[Callable[..., Any]], Callable[..., "Deferred[Any]"]]
"""Wraps a function of the calling thread so the reactor thread can have it run there."""

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

    def run(self, make: Callable[[Here], Awaitable[_T]]) -> _T:
        """Run ``make(here)`` in the reactor thread; block until it ends; its result.

        Its exception, if any, is raised here. ``here(fn)`` wraps ``fn`` so
        that the coroutine, calling the wrapper in the reactor thread, gets a
        Deferred of ``fn``'s result once this thread, blocked here, has run
        it. Must not be called from the reactor thread itself.
        """
        if threading.get_ident() == self._reactor_thread.ident:
            raise RuntimeError("blocking SDK calls cannot be made from the reactor thread")
        inbox = self._inbox()
        call = _Call()
        reactor = self._reactor

        def here(fn: Callable[..., Any]) -> Callable[..., Deferred[Any]]:
            def in_reactor(*args: Any, **kwargs: Any) -> Deferred[Any]:
                result: Deferred[Any] = Deferred()

                def run_here() -> None:
                    try:
                        value = fn(*args, **kwargs)
                    except BaseException:
                        reactor.callFromThread(result.errback, Failure())
                    else:
                        reactor.callFromThread(result.callback, value)

                inbox.put((call, run_here))
                return result

            return in_reactor

        def start() -> None:
            call.finished = ensureDeferred(_awaited(lambda: make(here)))
            call.finished.addBoth(lambda result: inbox.put((call, _Result(result))))

        reactor.callFromThread(start)
        try:
            result = _serve(inbox, call)
        except BaseException:
            reactor.callFromThread(call.cancel)
            raise
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def _inbox(self) -> queue.SimpleQueue[tuple[object, Any]]:
        """The calling thread's queue of results and functions to run."""
        inbox = getattr(self._local, "inbox", None)
        if inbox is None:
            inbox = self._local.inbox = queue.SimpleQueue()
        return inbox


class _Call:
    """One ``Bridge.run``: the tag of its messages, and its Deferred once started."""

    finished: Deferred[Any] | None = None

    def cancel(self) -> None:
        """Cancel the call's coroutine (in the reactor thread), if it has not ended."""
        if self.finished is not None:
            self.finished.cancel()


class _Result:
    """A call's outcome (a value or a ``Failure``), as its last message."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _serve(inbox: queue.SimpleQueue[tuple[_Call, Any]], call: _Call) -> Any:
    """Run the functions ``call`` hands back until its result arrives; the result.

    Messages of another call are dropped: only a call abandoned by Ctrl-C
    leaves any (a nested call runs while its caller waits for it).
    """
    while True:
        owner, message = inbox.get()
        if owner is not call:
            continue
        if isinstance(message, _Result):
            return message.value
        message()


async def _awaited(make: Callable[[], Awaitable[_T]]) -> _T:
    return await make()
