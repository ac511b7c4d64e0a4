"""How many request bytes the server holds, per connection and in total.

A request *holds* its frame's size (header included) from the moment its
header has arrived until its call is answered, refused or abandoned: that
covers the bytes buffered while the frame arrives and the body kept while
the operation runs (a sleep keeps its request until it wakes). A request is
*partial* while its frame is incomplete. The bounds (docs/protocol.md
section 2):

- per connection, at most ``partial_requests_per_connection`` partial
  requests, and at most ``connection_bytes`` held: one request of the largest
  size allowed plus ``CONNECTION_SLACK_BYTES`` for small calls beside it;
- per server process, at most ``max_buffered_bytes`` held by requests larger
  than ``SMALL_REQUEST_BYTES``. Small requests count only against their
  connection, so a client that fills the server-wide budget cannot starve
  the small calls of other clients;
- a partial request must be complete within ``receive_timeout`` seconds of
  its first byte, plus ``receive_seconds_per_mib`` per MiB it announces, so
  a slow trickle cannot hold memory forever.

``ConnectionBudget.hold`` answers whether a request may be held; the RPC
layer refuses a request that may not (``RESOURCE_EXHAUSTED``, retryable).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtara.frames import HEADER_SIZE

__all__ = [
    "CONNECTION_SLACK_BYTES",
    "SMALL_REQUEST_BYTES",
    "ConnectionBudget",
    "RequestBudget",
    "RequestLimits",
]

MiB = 1024 * 1024

SMALL_REQUEST_BYTES = 64 * 1024
"""Requests up to this size (header included) count only against their connection."""

CONNECTION_SLACK_BYTES = MiB
"""What a connection may hold beside one request of the largest size allowed."""


@dataclass(frozen=True)
class RequestLimits:
    """The bounds on requests the server holds (see the module docstring)."""

    max_message_bytes: int
    """The largest request body (``RUNTARA_MAX_MESSAGE_BYTES``)."""
    max_buffered_bytes: int = 256 * MiB
    """Bytes the requests larger than ``SMALL_REQUEST_BYTES`` may hold in total
    (``RUNTARA_MAX_BUFFERED_BYTES``)."""
    partial_requests_per_connection: int = 16
    receive_timeout: float = 30.0
    receive_seconds_per_mib: float = 1.0

    @property
    def connection_bytes(self) -> int:
        """What one connection may hold: one largest request, plus slack."""
        return HEADER_SIZE + self.max_message_bytes + CONNECTION_SLACK_BYTES

    def receive_deadline(self, frame_size: int) -> float:
        """Seconds a ``frame_size``-byte request may take to arrive completely."""
        return self.receive_timeout + self.receive_seconds_per_mib * frame_size / MiB


class RequestBudget:
    """What all the connections of one server hold."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.large_bytes = 0
        """Bytes held by requests larger than ``SMALL_REQUEST_BYTES``."""

    def connection(self) -> ConnectionBudget:
        """The budget of a new connection."""
        return ConnectionBudget(self)


class ConnectionBudget:
    """What one connection holds: bytes, and how many of its requests are partial."""

    def __init__(self, server: RequestBudget) -> None:
        self._server = server
        self.held_bytes = 0
        self.partial = 0

    def refusal(self, size: int, partial: bool) -> str | None:
        """Why a request of ``size`` bytes (partial or not) may not be held; None if it may."""
        limits = self._server.limits
        if partial and self.partial >= limits.partial_requests_per_connection:
            return (
                f"this connection already has {self.partial} incomplete requests"
                f" (at most {limits.partial_requests_per_connection})"
            )
        if self.held_bytes + size > limits.connection_bytes:
            return (
                f"this connection already holds {self.held_bytes} request bytes"
                f" (at most {limits.connection_bytes})"
            )
        if size > SMALL_REQUEST_BYTES and (
            self._server.large_bytes + size > limits.max_buffered_bytes
        ):
            return (
                f"the server already holds {self._server.large_bytes} bytes of large requests"
                f" (at most {limits.max_buffered_bytes})"
            )
        return None

    def hold(self, size: int, partial: bool) -> None:
        """Count a request of ``size`` bytes (``refusal`` said it may be held)."""
        self.held_bytes += size
        self.partial += partial
        if size > SMALL_REQUEST_BYTES:
            self._server.large_bytes += size

    def completed(self) -> None:
        """A partial request's frame has arrived completely (it stays held)."""
        self.partial -= 1

    def release(self, size: int, partial: bool) -> None:
        """Stop counting a request of ``size`` bytes (partial or not, as it was)."""
        self.held_bytes -= size
        self.partial -= partial
        if size > SMALL_REQUEST_BYTES:
            self._server.large_bytes -= size
