"""Background heartbeats: proof of life for a running instance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Heartbeat"]


class Heartbeat:
    """Calls ``send`` every ``interval`` seconds until stopped.

    A beat is skipped while the previous one is still in flight (during a
    reconnection, say), so beats never pile up. A failed beat is logged and
    the next one tried on schedule: heartbeats never fail the workflow.
    """

    _log = Logger()

    def __init__(
        self, clock: IReactorTime, interval: float, send: Callable[[], Awaitable[object]]
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, not {interval!r}")
        self._interval = interval
        self._send = send
        self._loop = LoopingCall(self._beat)
        self._loop.clock = clock
        self._in_flight: Deferred[object] | None = None
        self.sent = 0
        """Beats that were answered."""

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> None:
        """Send the first beat after one interval, then one per interval."""
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        """Stop sending; a beat in flight is abandoned."""
        if self._loop.running:
            self._loop.stop()
        if self._in_flight is not None:
            self._in_flight.cancel()

    def _beat(self) -> None:
        if self._in_flight is not None:
            return
        beat: Deferred[object] = ensureDeferred(_awaited(self._send))
        self._in_flight = beat
        beat.addCallbacks(self._answered, self._failed)
        beat.addBoth(self._done)

    def _answered(self, _: object) -> None:
        self.sent += 1

    def _failed(self, failure: Failure) -> None:
        if not self._loop.running:
            return
        self._log.warn("heartbeat failed: {reason}", reason=failure.getErrorMessage())

    def _done(self, _: object) -> None:
        self._in_flight = None


async def _awaited(send: Callable[[], Awaitable[object]]) -> object:
    return await send()
