"""The server's aioquic connection, with policies aioquic does not let us configure.

aioquic 1.x gives each connection id a random stateless reset token and has
no hook to choose it. ``ServerQuicConnection`` overrides the private method
that issues connection ids so that each one carries the token the server's
``StatelessResetter`` derives from it (``runtara.quic.reset``). This module
is the only place that touches aioquic's private connection-id state;
``tests/quic/test_stateless_reset.py`` checks that the tokens a client
receives are the derived ones, so an aioquic upgrade that changes these
internals fails there.
"""

from __future__ import annotations

from collections.abc import Callable

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

__all__ = ["ServerQuicConnection"]


class ServerQuicConnection(QuicConnection):
    """A server-side ``QuicConnection`` whose connection ids carry derived reset tokens.

    ``reset_token(connection_id)`` gives the token of each connection id the
    connection issues (in its transport parameters and NEW_CONNECTION_ID
    frames); None leaves aioquic's random tokens.
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
