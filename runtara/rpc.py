"""Calls over QUIC streams: one request frame in, one response frame out.

``RpcServer`` makes one ``RpcConnection`` per QUIC connection (it is the
transport's handler factory). A connection reads each client stream's single
frame, checks its header before reading the body (PROTOCOL.md section 2),
hands the body to the dispatcher and writes the response frame with FIN.

What requests may hold is bounded (``runtara.intake``): a request the
budget cannot take, or one whose frame does not arrive in time, is answered
at once and the client is asked to stop sending it.
"""

from __future__ import annotations

import enum

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from runtara import codec
from runtara.dispatch import (
    MALFORMED_REQUEST,
    MESSAGE_TOO_LARGE,
    Dispatcher,
    envelope_error,
    error_map,
)
from runtara.errors import ErrorKind
from runtara.frames import HEADER_SIZE, FrameBuffer, FrameType, encode_frame
from runtara.intake import ConnectionBudget, RequestBudget, RequestLimits
from runtara.interfaces import IConnectionHandler, IQuicChannel
from runtara.operations import CallAbandoned
from runtara.session import Admission, Session
from runtara.sleeper import Sleeper

CLOSE_GRACE_SECONDS = 0.1
"""How long a connection refused for its token lives on, so its answer gets out."""


class AppErrorCode(enum.IntEnum):
    """QUIC application error codes used by the server (connection and stream)."""

    NO_ERROR = 0
    UNAUTHENTICATED = 1
    SHUTTING_DOWN = 2
    MESSAGE_TOO_LARGE = 3
    MALFORMED_REQUEST = 4
    REQUEST_REFUSED = 5


class _Stream:
    """One request stream: its frame while it arrives, and what it holds of the budget."""

    __slots__ = ("buffer", "answered", "peer_finished", "held", "partial", "opened_at", "deadline")

    def __init__(self, opened_at: float) -> None:
        self.buffer: FrameBuffer | None = FrameBuffer()
        self.answered = False
        """Its call started, or its answer was sent: the rest of its bytes are ignored."""
        self.peer_finished = False
        self.held = 0
        """Bytes this stream counts in its connection's budget while it is read."""
        self.partial = False
        self.opened_at = opened_at
        self.deadline: IDelayedCall | None = None


class RpcServer:
    """Owns the calls of every connection; drains them on shutdown."""

    _log = Logger()

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        admission: Admission,
        sleeper: Sleeper,
        limits: RequestLimits,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.admission = admission
        self.sleeper = sleeper
        self.limits = limits
        self.budget = RequestBudget(limits)
        self._in_flight: set[Deferred[bytes]] = set()

    def handler_factory(self, channel: IQuicChannel) -> RpcConnection:
        return RpcConnection(self, channel, self.budget.connection())

    def track(self, call: Deferred[bytes]) -> None:
        self._in_flight.add(call)
        call.addBoth(self._forget, call)

    def _forget(self, result: object, call: Deferred[bytes]) -> object:
        self._in_flight.discard(call)
        return result

    def session_closed(self, session: Session) -> None:
        self.admission.release_session(session)
        self.sleeper.cancel_session(session)

    def drain(self) -> Deferred[object]:
        """Refuse new calls, drop sleeping ones, and fire when every other
        call has finished (its transaction committed and its answer sent)."""
        self.dispatcher.accepting = False
        self.sleeper.close()
        pending = list(self._in_flight)
        if pending:
            self._log.info("waiting for {count} calls in flight", count=len(pending))
        return DeferredList(pending, consumeErrors=True)


@implementer(IConnectionHandler)
class RpcConnection:
    _log = Logger()

    def __init__(self, server: RpcServer, channel: IQuicChannel, budget: ConnectionBudget) -> None:
        self._server = server
        self._channel = channel
        self._budget = budget
        self._streams: dict[int, _Stream] = {}
        self.session = Session(channel.peer, self._close_soon)
        self._log.info("connection from {peer} established", peer=channel.peer)

    # -- IConnectionHandler ------------------------------------------------

    def stream_data_received(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(self._server.clock.seconds())
        if end_stream:
            stream.peer_finished = True
        if not stream.answered:
            self._read(stream_id, stream, data)
        self._forget_if_done(stream_id, stream)

    def stream_reset(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._stop_reading(stream)

    def connection_lost(self, reason: str) -> None:
        self._log.info(
            "connection from {peer} closed: {reason}", peer=self.session.peer, reason=reason
        )
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._stop_reading(stream)
        self._server.session_closed(self.session)

    # -- one stream, one call ----------------------------------------------

    def _read(self, stream_id: int, stream: _Stream, data: bytes) -> None:
        buffer = stream.buffer
        assert buffer is not None
        buffer.feed(data)
        header = buffer.header
        max_message_bytes = self._server.limits.max_message_bytes
        if header is not None and header.length > max_message_bytes:
            self._refuse(
                stream_id,
                stream,
                envelope_error(
                    MESSAGE_TOO_LARGE,
                    f"Message of {header.length} bytes exceeds the limit of "
                    f"{max_message_bytes} bytes",
                ),
                AppErrorCode.MESSAGE_TOO_LARGE,
            )
        elif header is not None and header.frame_type != FrameType.REQUEST:
            self._refuse(
                stream_id,
                stream,
                envelope_error(
                    MALFORMED_REQUEST,
                    f"Malformed request: frame type {header.frame_type} is not a request (1)",
                ),
                AppErrorCode.MALFORMED_REQUEST,
            )
        elif buffer.complete:
            if self._hold(stream_id, stream, partial=False):
                self._call(stream_id, stream)
        elif stream.peer_finished:
            self._stop_reading(stream)
            stream.answered = True
            self._respond(
                stream_id, envelope_error(MALFORMED_REQUEST, "Malformed request: incomplete frame")
            )
        elif self._hold(stream_id, stream, partial=True):
            self._arm_deadline(stream_id, stream)

    def _hold(self, stream_id: int, stream: _Stream, partial: bool) -> bool:
        """Count what ``stream`` holds (its whole frame once the header is known, else
        the header); refuse it and return False when the budget cannot take it."""
        header = stream.buffer.header if stream.buffer is not None else None
        size = HEADER_SIZE + (header.length if header is not None else 0)
        if stream.held == size:
            if stream.partial and not partial:
                self._budget.completed()
                stream.partial = False
            return True
        self._budget.release(stream.held, stream.partial)
        stream.held, stream.partial = 0, False
        refusal = self._budget.refusal(size, partial)
        if refusal is not None:
            self._refuse(
                stream_id,
                stream,
                codec.encode(
                    error_map(
                        MESSAGE_TOO_LARGE,
                        ErrorKind.RESOURCE_EXHAUSTED,
                        f"Request of {size} bytes refused: {refusal}; retry later",
                        retryable=True,
                    )
                ),
                AppErrorCode.REQUEST_REFUSED,
            )
            return False
        self._budget.hold(size, partial)
        stream.held, stream.partial = size, partial
        return True

    def _arm_deadline(self, stream_id: int, stream: _Stream) -> None:
        """A partial request must arrive within the time its size allows, from its first byte."""
        clock = self._server.clock
        expires_at = stream.opened_at + self._server.limits.receive_deadline(stream.held)
        if stream.deadline is None:
            stream.deadline = clock.callLater(
                max(0.0, expires_at - clock.seconds()), self._expire, stream_id
            )
        elif stream.deadline.getTime() != expires_at:
            stream.deadline.reset(max(0.0, expires_at - clock.seconds()))

    def _expire(self, stream_id: int) -> None:
        """A partial request ran out of time: answer it and stop reading it."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.answered:
            return
        stream.deadline = None
        waited = self._server.clock.seconds() - stream.opened_at
        self._refuse(
            stream_id,
            stream,
            envelope_error(
                MALFORMED_REQUEST,
                f"Malformed request: frame still incomplete after {waited:.0f} s",
            ),
            AppErrorCode.MALFORMED_REQUEST,
        )
        self._forget_if_done(stream_id, stream)

    def _stop_reading(self, stream: _Stream) -> None:
        """Drop the stream's buffer, deadline and what it holds while being read."""
        stream.buffer = None
        if stream.deadline is not None and stream.deadline.active():
            stream.deadline.cancel()
        stream.deadline = None
        self._budget.release(stream.held, stream.partial)
        stream.held, stream.partial = 0, False

    def _refuse(self, stream_id: int, stream: _Stream, body: bytes, code: AppErrorCode) -> None:
        """Answer without reading the rest, then tell the peer to stop sending."""
        self._stop_reading(stream)
        stream.answered = True
        self._respond(stream_id, body)
        if not stream.peer_finished:
            self._channel.stop_stream(stream_id, code)

    def _call(self, stream_id: int, stream: _Stream) -> None:
        """Hand the complete frame's body to the dispatcher; it holds its bytes
        until it is answered or abandoned."""
        assert stream.buffer is not None
        body = stream.buffer.body
        held, stream.held = stream.held, 0
        self._stop_reading(stream)
        stream.answered = True
        call = self._server.dispatcher.dispatch(self.session, body)
        self._server.track(call)
        call.addBoth(self._release_call, held)
        call.addCallbacks(
            lambda response: self._respond(stream_id, response),
            self._abandoned,
        )

    def _release_call(self, result: object, held: int) -> object:
        self._budget.release(held, partial=False)
        return result

    def _abandoned(self, failure: Failure) -> None:
        if not failure.check(CallAbandoned):
            self._log.failure("call failed without an answer", failure)

    def _respond(self, stream_id: int, body: bytes) -> None:
        self._channel.send_stream_data(stream_id, encode_frame(FrameType.RESPONSE, body), True)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._forget_if_done(stream_id, stream)

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        if stream.answered and stream.peer_finished:
            self._streams.pop(stream_id, None)

    def _close_soon(self, reason: str) -> None:
        self._server.clock.callLater(
            CLOSE_GRACE_SECONDS, self._channel.close, AppErrorCode.UNAUTHENTICATED, reason
        )
