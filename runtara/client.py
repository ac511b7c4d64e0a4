"""A Twisted client for the instance protocol: one call per QUIC stream.

::

    client = await RuntaraClient.connect(reactor, "127.0.0.1", 8001, cafile="server.pem")
    await client.call("register_instance", {"instance_id": "i-1", "tenant_id": "t"})
    answer = await client.call(
        "checkpoint", {"instance_id": "i-1", "checkpoint_id": "a", "state": b"..."}
    )
    await client.close()

``call`` fires with the operation's result map, or fails with
``RemoteError`` carrying the error response's code, kind, message and
retryable flag. The SDK (``runtara.sdk``) builds reconnection, retries and
heartbeats on top of this class.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from runtara import codec
from runtara.frames import FrameType, decode_frame, encode_frame
from runtara.quic.client import QuicClientConnection, connect


class RemoteError(Exception):
    """The server answered with an error response (PROTOCOL.md section 4)."""

    def __init__(self, code: str, kind: str, message: str, retryable: bool) -> None:
        super().__init__(f"{code}/{kind}: {message}")
        self.code = code
        self.kind = kind
        self.message = message
        self.retryable = retryable


class ProtocolViolation(Exception):
    """The server's answer is not a valid response frame."""


def request_frame(operation: str, fields: dict[str, Any]) -> bytes:
    """The request frame for ``operation`` with ``fields``."""
    return encode_frame(FrameType.REQUEST, codec.encode({operation: fields}))


def parse_response(data: bytes) -> dict[str, Any]:
    """The response map of one response frame (``{operation: result}`` or
    ``{"error": {...}}``)."""
    try:
        frame_type, body = decode_frame(data)
        response = codec.decode(body)
    except ValueError as error:
        raise ProtocolViolation(f"invalid response: {error}") from None
    if frame_type != FrameType.RESPONSE:
        raise ProtocolViolation(f"invalid response: frame type {frame_type}")
    if not isinstance(response, dict) or len(response) != 1:
        raise ProtocolViolation("invalid response: the body must be a map with one key")
    return response


class RuntaraClient:
    """Protocol calls over one QUIC connection."""

    def __init__(self, connection: QuicClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, reactor: Any, host: str, port: int, **options: Any) -> RuntaraClient:
        """Connect and handshake; ``options`` are those of ``runtara.quic.client.connect``."""
        return cls(await connect(reactor, host, port, **options))

    async def call(self, operation: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one operation; fire with its result map or fail with ``RemoteError``."""
        response = parse_response(await self.request(request_frame(operation, fields or {})))
        if "error" in response:
            error = response["error"]
            raise RemoteError(
                error.get("code", ""),
                error.get("kind", ""),
                error.get("message", ""),
                bool(error.get("retryable", False)),
            )
        if operation not in response:
            raise ProtocolViolation(f"invalid response: expected '{operation}'")
        return response[operation]

    def request(self, data: bytes, end_stream: bool = True) -> Deferred[bytes]:
        """Send raw bytes on a new stream; fire with every byte of the answer."""
        return self.connection.request(data, end_stream=end_stream)

    def close(self) -> Deferred[None]:
        return self.connection.close()
