"""Frames: length u32 BE | type u16 BE | body (PROTOCOL.md section 2)."""

import struct

import pytest

from runtara.frames import FrameBuffer, FrameType, decode_frame, encode_frame


def test_encode_lays_out_header_then_body():
    frame = encode_frame(FrameType.REQUEST, b"abc")
    assert frame == struct.pack(">IH", 3, 1) + b"abc"


def test_decode_round_trips_and_rejects_wrong_lengths():
    assert decode_frame(encode_frame(FrameType.RESPONSE, b"xyz")) == (2, b"xyz")
    with pytest.raises(ValueError):
        decode_frame(b"\x00\x00")
    with pytest.raises(ValueError):
        decode_frame(struct.pack(">IH", 5, 2) + b"abc")
    with pytest.raises(ValueError):
        decode_frame(struct.pack(">IH", 1, 2) + b"abc")


def test_buffer_assembles_a_frame_fed_one_byte_at_a_time():
    frame = encode_frame(FrameType.REQUEST, bytes(range(256)) * 10)
    buffer = FrameBuffer()
    for index in range(len(frame)):
        assert not buffer.complete
        buffer.feed(frame[index : index + 1])
        if index >= 5:
            assert buffer.header is not None
            assert buffer.header.length == 2560
    assert buffer.complete
    assert buffer.body == bytes(range(256)) * 10


def test_buffer_knows_the_header_before_the_body_arrives():
    buffer = FrameBuffer()
    buffer.feed(struct.pack(">IH", 1 << 31, 1))
    assert buffer.header is not None
    assert buffer.header.length == 1 << 31
    assert not buffer.complete


def test_buffer_ignores_bytes_after_the_frame():
    buffer = FrameBuffer()
    buffer.feed(encode_frame(FrameType.REQUEST, b"body") + b"trailing")
    assert buffer.complete
    assert buffer.body == b"body"


def test_zero_length_frame_is_complete_with_empty_body():
    buffer = FrameBuffer()
    buffer.feed(struct.pack(">IH", 0, 1))
    assert buffer.complete
    assert buffer.body == b""
