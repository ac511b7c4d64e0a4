"""Per-connection session state and the server-wide instance limit (PROTOCOL.md section 5)."""

from __future__ import annotations

from collections.abc import Callable


class Session:
    """What the server knows about one connection.

    A connection is anonymous until its first successful
    ``register_instance``; from then on it belongs to that tenant.
    """

    def __init__(self, peer: object, close: Callable[[str], None]) -> None:
        self.peer = peer
        self.tenant_id: str | None = None
        self._close = close

    @property
    def registered(self) -> bool:
        return self.tenant_id is not None

    def close(self, reason: str) -> None:
        """Close the connection (after the current response has been sent)."""
        self._close(reason)


class Admission:
    """Counts the instances registered and running on this server.

    An instance is admitted by ``register_instance`` and stops counting when
    it reaches a terminal status, suspends (a sleep, a pause, a suspended
    event) or its connection closes. An instance waking from a sleep on a
    live connection counts again even if that briefly exceeds the limit: a
    wake-up cannot be refused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._holders: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._holders)

    def is_counted(self, instance_id: str) -> bool:
        return instance_id in self._holders

    def try_admit(self, instance_id: str, session: Session) -> bool:
        """Count ``instance_id`` for ``session``; False when the server is full.

        An instance already counted is moved to ``session`` and never refused.
        """
        if instance_id not in self._holders and len(self._holders) >= self.limit:
            return False
        self._holders[instance_id] = session
        return True

    def readmit(self, instance_id: str, session: Session) -> None:
        """Count a woken instance again, regardless of the limit."""
        self._holders[instance_id] = session

    def release(self, instance_id: str) -> None:
        self._holders.pop(instance_id, None)

    def release_session(self, session: Session) -> None:
        """Stop counting every instance held by a closed connection."""
        for instance_id in [i for i, holder in self._holders.items() if holder is session]:
            del self._holders[instance_id]
