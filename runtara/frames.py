"""Frames: ``length: u32 BE | type: u16 BE | body`` (PROTOCOL.md section 2)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">IH")
HEADER_SIZE = HEADER.size


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2


def encode_frame(frame_type: int, body: bytes) -> bytes:
    """One frame holding ``body``."""
    return HEADER.pack(len(body), frame_type) + body


@dataclass(frozen=True)
class FrameHeader:
    length: int
    frame_type: int


class FrameBuffer:
    """Collects the bytes of one stream until its single frame is complete.

    ``header`` is known once six bytes have arrived; ``body`` once the whole
    announced length has. Bytes beyond the frame are ignored: a stream
    carries exactly one frame.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self.header: FrameHeader | None = None

    def feed(self, data: bytes) -> None:
        if self.header is None or len(self._data) < HEADER_SIZE + self.header.length:
            self._data += data
        if self.header is None and len(self._data) >= HEADER_SIZE:
            length, frame_type = HEADER.unpack_from(self._data)
            self.header = FrameHeader(length, frame_type)

    @property
    def complete(self) -> bool:
        return self.header is not None and len(self._data) >= HEADER_SIZE + self.header.length

    @property
    def body(self) -> bytes:
        """The frame's body; only valid once ``complete``."""
        assert self.header is not None
        return bytes(self._data[HEADER_SIZE : HEADER_SIZE + self.header.length])


def decode_frame(data: bytes) -> tuple[int, bytes]:
    """Split one complete frame into (type, body).

    Raises ``ValueError`` when ``data`` is not exactly one frame.
    """
    if len(data) < HEADER_SIZE:
        raise ValueError(f"incomplete frame header ({len(data)} bytes)")
    length, frame_type = HEADER.unpack_from(data)
    if len(data) != HEADER_SIZE + length:
        raise ValueError(
            f"frame announces {length} body bytes but carries {len(data) - HEADER_SIZE}"
        )
    return frame_type, data[HEADER_SIZE:]
