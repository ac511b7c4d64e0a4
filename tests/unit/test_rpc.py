"""One stream, one call: the RPC layer between QUIC streams and the dispatcher."""

import struct

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from runtara import codec
from runtara.client import parse_response
from runtara.frames import FrameType, encode_frame
from runtara.interfaces import IConnectionHandler, IQuicChannel
from runtara.rpc import AppErrorCode, RpcServer
from runtara.session import Admission
from runtara.sleeper import Sleeper


@implementer(IQuicChannel)
class RecordingChannel:
    peer = ("127.0.0.1", 4433)

    def __init__(self):
        self.sent = {}
        self.finished = set()
        self.stopped = {}
        self.closed = None

    def send_stream_data(self, stream_id, data, end_stream):
        self.sent[stream_id] = self.sent.get(stream_id, b"") + data
        if end_stream:
            self.finished.add(stream_id)

    def stop_stream(self, stream_id, error_code):
        self.stopped[stream_id] = error_code

    def reset_stream(self, stream_id, error_code):
        raise AssertionError("the server never resets its own answers")

    def close(self, error_code, reason):
        self.closed = (error_code, reason)


class EchoDispatcher:
    """Answers every body with ``{"echo": {"body": body}}``; calls can be held."""

    def __init__(self):
        self.accepting = True
        self.bodies = []
        self.held = None

    def dispatch(self, session, body):
        self.bodies.append(body)
        answer = codec.encode({"echo": {"body": body}})
        if self.held is not None:
            return self.held.addCallback(lambda _: answer)
        return succeed(answer)


@pytest.fixture
def wiring():
    clock = Clock()
    dispatcher = EchoDispatcher()
    server = RpcServer(dispatcher, clock, Admission(4), Sleeper(clock), max_message_bytes=100)
    channel = RecordingChannel()
    return server, dispatcher, channel, server.handler_factory(channel)


def answer(channel, stream_id):
    assert stream_id in channel.finished, "the answer ends the stream"
    return parse_response(channel.sent[stream_id])


def test_connections_provide_the_handler_interface(wiring):
    _, _, _, connection = wiring
    assert verifyObject(IConnectionHandler, connection)


def test_a_frame_split_across_packets_is_one_call(wiring):
    _, dispatcher, channel, connection = wiring
    frame = encode_frame(FrameType.REQUEST, b"hello")
    connection.stream_data_received(0, frame[:3], False)
    connection.stream_data_received(0, frame[3:8], False)
    assert dispatcher.bodies == []
    connection.stream_data_received(0, frame[8:], True)
    assert dispatcher.bodies == [b"hello"]
    assert answer(channel, 0) == {"echo": {"body": b"hello"}}


def test_a_late_fin_does_not_cause_a_second_answer(wiring):
    _, dispatcher, channel, connection = wiring
    connection.stream_data_received(4, encode_frame(FrameType.REQUEST, b"x"), False)
    connection.stream_data_received(4, b"", True)
    assert dispatcher.bodies == [b"x"]
    assert answer(channel, 4) == {"echo": {"body": b"x"}}


def test_an_oversized_header_is_answered_and_the_body_never_read(wiring):
    _, dispatcher, channel, connection = wiring
    connection.stream_data_received(0, struct.pack(">IH", 101, 1), False)
    assert answer(channel, 0)["error"]["code"] == "MESSAGE_TOO_LARGE"
    assert channel.stopped == {0: AppErrorCode.MESSAGE_TOO_LARGE}
    connection.stream_data_received(0, b"x" * 101, True)
    assert dispatcher.bodies == []


def test_a_frame_of_another_type_is_malformed(wiring):
    _, dispatcher, channel, connection = wiring
    connection.stream_data_received(0, encode_frame(FrameType.RESPONSE, b"{}"), True)
    assert answer(channel, 0)["error"]["code"] == "MALFORMED_REQUEST"
    assert dispatcher.bodies == []


def test_a_stream_ended_mid_frame_is_malformed(wiring):
    _, dispatcher, channel, connection = wiring
    connection.stream_data_received(8, struct.pack(">IH", 10, 1) + b"abc", True)
    error = answer(channel, 8)["error"]
    assert (error["code"], error["message"]) == (
        "MALFORMED_REQUEST",
        "Malformed request: incomplete frame",
    )
    assert dispatcher.bodies == []


def test_calls_on_one_connection_finish_in_any_order(wiring):
    _, dispatcher, channel, connection = wiring
    dispatcher.held = Deferred()
    connection.stream_data_received(0, encode_frame(FrameType.REQUEST, b"slow"), True)
    dispatcher.held, slow = None, dispatcher.held
    connection.stream_data_received(4, encode_frame(FrameType.REQUEST, b"fast"), True)
    assert 4 in channel.finished and 0 not in channel.finished
    slow.callback(None)
    assert answer(channel, 0) == {"echo": {"body": b"slow"}}


def test_draining_waits_for_calls_in_flight(wiring):
    server, dispatcher, channel, connection = wiring
    dispatcher.held = Deferred()
    connection.stream_data_received(0, encode_frame(FrameType.REQUEST, b"work"), True)
    drained = server.drain()
    assert not dispatcher.accepting
    assert not drained.called
    dispatcher.held.callback(None)
    assert drained.called
    assert answer(channel, 0) == {"echo": {"body": b"work"}}


def test_closing_the_connection_frees_its_instances(wiring):
    server, _, _, connection = wiring
    server.admission.try_admit("i-1", connection.session)
    connection.connection_lost("idle timeout")
    assert len(server.admission) == 0
