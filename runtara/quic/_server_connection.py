"""The server's aioquic connection, with policies aioquic does not let us configure.

aioquic 1.x has no hook for two things the server needs, so
``ServerQuicConnection`` overrides private methods of ``QuicConnection``:

- **Stateless reset tokens.** aioquic gives each connection id a random
  token; here each one carries the token the server's ``StatelessResetter``
  derives from it (``runtara.quic.reset``).
- **Receive credit.** aioquic doubles a stream's credit whenever half of it
  is used, and the connection's credit whenever half of it is used, whatever
  the application still holds; data it receives out of order it keeps in a
  buffer as large as the gap. A client could so make the server buffer
  without bound. Here a stream's credit stays what the configuration's
  ``max_stream_data`` grants (one request frame of the largest size), and
  the connection's credit (MAX_DATA) grows only as data is delivered to the
  application, so aioquic never holds more than ``max_data`` bytes of one
  connection's undelivered data.

This module is the only place that overrides aioquic's methods; the one
other place that touches its private state is ``runtara.quic._driver``'s
``_acknowledge_now`` (both sides: an ACK rides in the next data packet).
``tests/quic/test_stateless_reset.py``, ``tests/quic/test_receive_credit.py``
and ``tests/quic/test_driver.py`` check the behaviour from the outside, so an
aioquic upgrade that changes these internals fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

__all__ = ["ServerQuicConnection"]


class ServerQuicConnection(QuicConnection):
    """A server-side ``QuicConnection`` with derived reset tokens and bounded receive credit.

    ``reset_token(connection_id)`` gives the token of each connection id the
    connection issues (in its transport parameters and NEW_CONNECTION_ID
    frames); None leaves aioquic's random tokens. ``configuration.max_data``
    is the connection's receive window beyond the bytes delivered to the
    application; ``configuration.max_stream_data`` is each stream's credit,
    never raised.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes,
        reset_token: Callable[[bytes], bytes] | None = None,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
        )
        self._reset_token = reset_token
        self._receive_window = configuration.max_data
        self._derive_reset_tokens()

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self._derive_reset_tokens()

    def _derive_reset_tokens(self) -> None:
        """Give every connection id we issue its derived token, before it is sent."""
        if self._reset_token is None:
            return
        for connection_id in self._host_cids:
            connection_id.stateless_reset_token = self._reset_token(connection_id.cid)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        """Send no MAX_STREAM_DATA: a stream keeps the credit it started with."""

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        """Raise MAX_DATA to the bytes delivered so far plus the window, then let
        aioquic write the MAX_DATA and MAX_STREAMS frames."""
        limit = self._local_max_data
        window = self._receive_window
        if limit.value - limit.used <= window * 3 // 4:
            credit = limit.used - self._undelivered_bytes() + window
            if credit - limit.value >= window // 4:
                limit.value = credit
        # aioquic's own rule doubles MAX_DATA when more than half of it is used;
        # hide the usage while it writes, so that only the rule above applies.
        used, limit.used = limit.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _undelivered_bytes(self) -> int:
        """Bytes received (or skipped over, out of order) but not yet delivered."""
        return sum(
            stream.receiver.highest_offset - stream.receiver.starting_offset()
            for stream in self._streams.values()
        )
