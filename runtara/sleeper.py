"""Server-held timers for durable sleeps (PROTOCOL.md 6.4).

A sleeping call waits on a reactor timer, never a thread. When the
connection closes first, its timers are dropped: the instance stays
``suspended`` with ``sleep_until`` recorded, due for waking.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime

from runtara.session import Session


class Sleeper:
    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._waiting: dict[Session, set[Deferred[None]]] = {}
        self._closed = False

    def wait(self, session: Session, seconds: float) -> Deferred[None]:
        """Fire after ``seconds``; fails with ``CancelledError`` if dropped first
        (or at once when the sleeper is closed: the server is shutting down)."""
        if self._closed:
            return fail(CancelledError())
        waits = self._waiting.setdefault(session, set())
        call = None

        def cancel(deferred: Deferred[None]) -> None:
            if call is not None and call.active():
                call.cancel()

        sleeping: Deferred[None] = Deferred(cancel)
        call = self._clock.callLater(max(0.0, seconds), sleeping.callback, None)
        waits.add(sleeping)

        def forget(result: object) -> object:
            waits.discard(sleeping)
            if not waits:
                self._waiting.pop(session, None)
            return result

        sleeping.addBoth(forget)
        return sleeping

    def cancel_session(self, session: Session) -> None:
        """Drop every timer of a closed connection."""
        for sleeping in list(self._waiting.get(session, ())):
            sleeping.cancel()

    def close(self) -> None:
        """Drop every timer and refuse new ones."""
        self._closed = True
        for session in list(self._waiting):
            self.cancel_session(session)

    def __len__(self) -> int:
        return sum(len(waits) for waits in self._waiting.values())
