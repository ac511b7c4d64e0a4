"""Calls over QUIC streams: one request frame in, one response frame out.

``RpcServer`` makes one ``RpcConnection`` per QUIC connection (it is the
transport's handler factory). A connection reads each client stream's single
frame, checks its header before reading the body (PROTOCOL.md section 2),
hands the body to the dispatcher and writes the response frame with FIN.
"""

from __future__ import annotations

import enum

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from runtara.dispatch import MALFORMED_REQUEST, MESSAGE_TOO_LARGE, Dispatcher, envelope_error
from runtara.frames import FrameBuffer, FrameType, encode_frame
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


class _Stream:
    __slots__ = ("buffer", "answered", "peer_finished")

    def __init__(self) -> None:
        self.buffer = FrameBuffer()
        self.answered = False
        self.peer_finished = False


class RpcServer:
    """Owns the calls of every connection; drains them on shutdown."""

    _log = Logger()

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        admission: Admission,
        sleeper: Sleeper,
        max_message_bytes: int,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.admission = admission
        self.sleeper = sleeper
        self.max_message_bytes = max_message_bytes
        self._in_flight: set[Deferred[bytes]] = set()

    def handler_factory(self, channel: IQuicChannel) -> RpcConnection:
        return RpcConnection(self, channel)

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

    def __init__(self, server: RpcServer, channel: IQuicChannel) -> None:
        self._server = server
        self._channel = channel
        self._streams: dict[int, _Stream] = {}
        self.session = Session(channel.peer, self._close_soon)
        self._log.info("connection from {peer} established", peer=channel.peer)

    # -- IConnectionHandler ------------------------------------------------

    def stream_data_received(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream()
        if end_stream:
            stream.peer_finished = True
        if not stream.answered:
            self._read(stream_id, stream, data)
        self._forget_if_done(stream_id, stream)

    def stream_reset(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def connection_lost(self, reason: str) -> None:
        self._log.info(
            "connection from {peer} closed: {reason}", peer=self.session.peer, reason=reason
        )
        self._streams.clear()
        self._server.session_closed(self.session)

    # -- one stream, one call ----------------------------------------------

    def _read(self, stream_id: int, stream: _Stream, data: bytes) -> None:
        buffer = stream.buffer
        buffer.feed(data)
        header = buffer.header
        if header is not None and header.length > self._server.max_message_bytes:
            self._refuse(
                stream_id,
                stream,
                envelope_error(
                    MESSAGE_TOO_LARGE,
                    f"Message of {header.length} bytes exceeds the limit of "
                    f"{self._server.max_message_bytes} bytes",
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
            stream.answered = True
            self._call(stream_id, buffer.body)
        elif stream.peer_finished:
            stream.answered = True
            self._respond(
                stream_id, envelope_error(MALFORMED_REQUEST, "Malformed request: incomplete frame")
            )

    def _refuse(self, stream_id: int, stream: _Stream, body: bytes, code: AppErrorCode) -> None:
        """Answer without reading the rest, then tell the peer to stop sending."""
        stream.answered = True
        self._respond(stream_id, body)
        if not stream.peer_finished:
            self._channel.stop_stream(stream_id, code)
        stream.peer_finished = True

    def _call(self, stream_id: int, body: bytes) -> None:
        call = self._server.dispatcher.dispatch(self.session, body)
        self._server.track(call)
        call.addCallbacks(
            lambda response: self._respond(stream_id, response),
            self._abandoned,
        )

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
