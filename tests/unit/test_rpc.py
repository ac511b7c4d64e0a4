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
from runtara.intake import RequestLimits
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
    server = RpcServer(
        dispatcher, clock, Admission(4), Sleeper(clock), RequestLimits(max_message_bytes=100)
    )
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


# -- what requests may hold (runtara.intake) ----------------------------------------------

MiB = 1024 * 1024


def build(limits):
    clock = Clock()
    dispatcher = EchoDispatcher()
    server = RpcServer(dispatcher, clock, Admission(4), Sleeper(clock), limits)
    return clock, server, dispatcher


def connect(server):
    channel = RecordingChannel()
    return channel, server.handler_factory(channel)


def announce(connection, stream_id, length, first=b"x"):
    """Start a request frame announcing ``length`` body bytes; send only ``first``."""
    connection.stream_data_received(stream_id, struct.pack(">IH", length, 1) + first, False)


def refused(channel, stream_id):
    error = answer(channel, stream_id)["error"]
    assert (error["code"], error["kind"], error["retryable"]) == (
        "MESSAGE_TOO_LARGE",
        "RESOURCE_EXHAUSTED",
        True,
    )
    assert channel.stopped[stream_id] == AppErrorCode.REQUEST_REFUSED
    return error["message"]


def test_a_connection_has_at_most_16_incomplete_requests(wiring):
    server, dispatcher, channel, connection = wiring
    for index in range(16):
        announce(connection, 4 * index, 50)
    announce(connection, 64, 50)

    assert "already has 16 incomplete requests" in refused(channel, 64)
    assert all(4 * index not in channel.sent for index in range(16))
    connection.stream_data_received(0, b"y" * 49, True)
    assert dispatcher.bodies == [b"x" + b"y" * 49]
    announce(connection, 68, 50)
    assert 68 not in channel.sent


def test_a_connection_holds_one_largest_request_and_small_ones_beside(wiring):
    clock, server, dispatcher = build(RequestLimits(max_message_bytes=4 * MiB))
    channel, connection = connect(server)
    announce(connection, 0, 4 * MiB)
    announce(connection, 4, 512 * 1024)
    announce(connection, 8, 2 * MiB)

    assert 0 not in channel.sent and 4 not in channel.sent
    assert "this connection already holds" in refused(channel, 8)


def test_large_requests_share_the_server_budget_small_ones_do_not(wiring):
    limits = RequestLimits(max_message_bytes=MiB, max_buffered_bytes=2 * (MiB + 6))
    clock, server, dispatcher = build(limits)
    (first, a), (second, b), (third, c) = connect(server), connect(server), connect(server)
    announce(a, 0, MiB)
    announce(b, 0, MiB)
    announce(c, 0, MiB)
    announce(c, 4, 60 * 1024)

    assert 0 not in first.sent and 0 not in second.sent
    assert "the server already holds 2097164 bytes of large requests" in refused(third, 0)
    assert 4 not in third.sent, "a small request counts only against its connection"
    a.stream_data_received(0, b"y" * (MiB - 1), True)
    announce(c, 8, MiB)
    assert 8 not in third.sent, "the finished call gave its bytes back"


def test_a_call_holds_its_request_until_it_is_answered():
    clock, server, dispatcher = build(
        RequestLimits(max_message_bytes=MiB, max_buffered_bytes=MiB + 6)
    )
    channel, connection = connect(server)
    dispatcher.held = Deferred()
    connection.stream_data_received(0, encode_frame(FrameType.REQUEST, b"z" * MiB), True)
    announce(connection, 4, MiB)
    refused(channel, 4)

    dispatcher.held.callback(None)
    announce(connection, 8, MiB)
    assert answer(channel, 0) == {"echo": {"body": b"z" * MiB}}
    assert 8 not in channel.sent


def test_a_request_must_arrive_in_time():
    clock, server, dispatcher = build(RequestLimits(max_message_bytes=8 * MiB))
    channel, connection = connect(server)
    announce(connection, 0, 4 * MiB)
    announce(connection, 4, 10)

    clock.advance(30.1)
    error = answer(channel, 4)["error"]
    assert (error["code"], error["message"]) == (
        "MALFORMED_REQUEST",
        "Malformed request: frame still incomplete after 30 s",
    )
    assert channel.stopped[4] == AppErrorCode.MALFORMED_REQUEST
    clock.advance(3.9)
    assert 0 not in channel.sent, "30 s plus one second per MiB announced"
    connection.stream_data_received(0, b"y" * MiB, False)
    clock.advance(0.2)
    assert answer(channel, 0)["error"]["code"] == "MALFORMED_REQUEST"
    assert dispatcher.bodies == []


def test_a_request_that_arrives_in_time_is_not_expired():
    clock, server, dispatcher = build(RequestLimits(max_message_bytes=100))
    channel, connection = connect(server)
    announce(connection, 0, 3)
    clock.advance(29)
    connection.stream_data_received(0, b"yz", True)
    clock.advance(60)
    assert answer(channel, 0) == {"echo": {"body": b"xyz"}}
    assert clock.getDelayedCalls() == []


def test_resets_and_lost_connections_give_back_what_they_held():
    limits = RequestLimits(max_message_bytes=MiB, max_buffered_bytes=MiB + 6)
    clock, server, dispatcher = build(limits)
    channel, connection = connect(server)
    announce(connection, 0, MiB)
    connection.stream_reset(0)
    announce(connection, 4, MiB)
    connection.connection_lost("gone")

    other, replacement = connect(server)
    announce(replacement, 0, MiB)
    assert 0 not in other.sent
    assert clock.getDelayedCalls() != []
    replacement.stream_reset(0)
    assert clock.getDelayedCalls() == []


def test_the_rest_of_a_refused_request_is_ignored(wiring):
    server, dispatcher, channel, connection = wiring
    connection.stream_data_received(0, struct.pack(">IH", 101, 1), False)
    connection.stream_data_received(0, struct.pack(">IH", 1, 1) + b"x", False)
    connection.stream_data_received(0, b"", True)
    assert dispatcher.bodies == []
    assert answer(channel, 0)["error"]["code"] == "MESSAGE_TOO_LARGE"
