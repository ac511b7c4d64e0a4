"""Stateless resets (RFC 9000 section 10.3): a restarted server ends connections it forgot.

Every connection id the server issues carries the stateless reset token
``HMAC-SHA256(key, connection_id)[:16]``, where ``key`` is a secret kept in
the server's state directory (``stateless-reset.key``, created once with mode
0600, like the generated certificate). A server restarted on the same state
directory derives the same token for a connection id it never saw, so it can
answer a short-header packet for that id with a stateless reset, and the
client ends the connection at once instead of waiting for its idle timeout.

The RFC's rules, as applied here:

- only a short-header packet (the form a client uses after the handshake)
  for an unknown connection id is answered;
- a reset is always smaller than the packet that triggered it and at least
  21 bytes long, so two endpoints can never reset each other in a loop: a
  packet of 21 bytes or less gets no answer;
- resets are rate-limited (a token bucket: ``RESET_RATE`` per second, bursts
  of ``RESET_BURST``), so spoofed packets cannot turn the server into a
  traffic source.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = [
    "MIN_RESET_SIZE",
    "RESET_KEY_FILE",
    "StatelessResetter",
    "is_stateless_reset",
    "load_or_create_reset_key",
    "reset_token",
]

RESET_KEY_FILE = "stateless-reset.key"
"""Name of the secret key file in the server's state directory."""

KEY_SIZE = 32
TOKEN_SIZE = 16

MIN_RESET_SIZE = 21
"""The smallest stateless reset: one header byte, four unpredictable bytes, the token."""

MAX_RESET_SIZE = 43
"""Resets answering larger packets are this long (RFC 9000 section 10.3 suggests
resets one byte shorter than triggering packets of up to 43 bytes)."""

RESET_RATE = 100.0
"""Stateless resets the server may send per second, on average."""

RESET_BURST = 100
"""Stateless resets the server may send at once, after a quiet period."""

_SHORT_HEADER_FORM = 0x80
_FIXED_BIT = 0x40

_log = Logger()


def reset_token(key: bytes, connection_id: bytes) -> bytes:
    """The stateless reset token of ``connection_id``: ``HMAC-SHA256(key, cid)[:16]``."""
    return hmac.new(key, connection_id, hashlib.sha256).digest()[:TOKEN_SIZE]


def load_or_create_reset_key(state_dir: Path | str) -> bytes:
    """The state directory's stateless reset key, generated (mode 0600) the first time.

    Creation is atomic and never replaces an existing key, so server
    processes that share a state directory and start together all end up
    with the same key. Raises ``ValueError`` for a key file of the wrong size.
    """
    state_dir = Path(state_dir)
    path = state_dir / RESET_KEY_FILE
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_key(path)
    key = path.read_bytes()
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"stateless reset key {path} holds {len(key)} bytes, not {KEY_SIZE};"
            " delete it to generate a new one"
        )
    if path.stat().st_mode & 0o077:
        _log.warn("stateless reset key {path} is accessible by other users", path=str(path))
    return key


def _create_key(path: Path) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(os.urandom(KEY_SIZE))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process sharing the state directory made it first: use theirs
        else:
            _log.info("generated the stateless reset key {path}", path=str(path))
    finally:
        temporary.unlink(missing_ok=True)


def is_stateless_reset(datagram: bytes, tokens: Iterable[bytes]) -> bool:
    """Whether ``datagram`` is a stateless reset carrying one of ``tokens``.

    A reset looks like a short-header packet of at least 21 bytes whose last
    16 bytes are the token; the comparison takes constant time.
    """
    if len(datagram) < MIN_RESET_SIZE or datagram[0] & _SHORT_HEADER_FORM:
        return False
    tail = datagram[-TOKEN_SIZE:]
    return any(hmac.compare_digest(tail, token) for token in tokens if token)


class StatelessResetter:
    """Derives tokens for the connection ids a server issues, and builds resets."""

    def __init__(
        self,
        key: bytes,
        clock: IReactorTime,
        *,
        rate: float = RESET_RATE,
        burst: int = RESET_BURST,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._key = key
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._random_bytes = random_bytes
        self._allowance = float(burst)
        self._updated = clock.seconds()

    def token(self, connection_id: bytes) -> bytes:
        """The stateless reset token the server gives ``connection_id``."""
        return reset_token(self._key, connection_id)

    def reset_for(self, trigger_size: int, connection_id: bytes) -> bytes | None:
        """A stateless reset answering a ``trigger_size``-byte short-header packet
        for ``connection_id``; None when the packet is too small to answer or the
        rate limit is reached."""
        size = min(trigger_size - 1, MAX_RESET_SIZE)
        if size < MIN_RESET_SIZE or not self._allowed():
            return None
        unpredictable = self._random_bytes(size - TOKEN_SIZE)
        first = _FIXED_BIT | (unpredictable[0] & 0x3F)
        return bytes([first]) + unpredictable[1:] + self.token(connection_id)

    def _allowed(self) -> bool:
        now = self._clock.seconds()
        self._allowance = min(self._burst, self._allowance + (now - self._updated) * self._rate)
        self._updated = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True
