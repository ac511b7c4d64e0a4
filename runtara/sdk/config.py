"""The SDK's configuration, read from the environment the engine's launchers set.

| variable | meaning | default |
|---|---|---|
| ``RUNTARA_INSTANCE_ID`` | the instance this process runs (required) | |
| ``RUNTARA_TENANT_ID`` | its tenant (required) | |
| ``RUNTARA_SERVER_ADDR`` | ``host:port``, IPv6 in brackets (``[::1]:8001``) | ``127.0.0.1:8001`` |
| ``RUNTARA_SERVER_NAME`` | the name the server certificate must carry | ``localhost`` |
| ``RUNTARA_CA_FILE`` | PEM file of the CA (or the server certificate) to trust | system CAs |
| ``RUNTARA_SERVER_FINGERPRINT`` | pinned SHA-256 fingerprint of the server certificate | |
| ``RUNTARA_SKIP_CERT_VERIFICATION`` | ``true`` to skip verifying the server (unsafe) | ``false`` |
| ``RUNTARA_AUTH_TOKEN`` | the tenant's token, when the server requires one | |
| ``RUNTARA_HEARTBEAT_INTERVAL_MS`` | milliseconds between heartbeats; 0 disables them | ``30000`` |
| ``RUNTARA_REQUEST_TIMEOUT_MS`` | milliseconds one call may take before it is retried | ``30000`` |

An empty variable counts as not set. Every invalid value raises
``SdkConfigError`` whose message starts with the variable's name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from runtara.certificate import normalize_fingerprint
from runtara.fields import MAX_INSTANCE_ID_BYTES
from runtara.sdk.errors import SdkConfigError
from runtara.sdk.retry import Backoff
from runtara.settings import boolean, integer

__all__ = ["DEFAULT_SERVER_ADDR", "SdkConfig", "config_from_env", "parse_server_addr"]

DEFAULT_SERVER_ADDR = "127.0.0.1:8001"

_PORT = integer(1, 65535)


@dataclass(frozen=True, kw_only=True)
class SdkConfig:
    """How one workflow process reaches runtara-core and identifies its instance.

    Times are in seconds. The first ten fields come from the environment
    (``config_from_env``); the rest tune the connection and are set in
    code, as overrides.
    """

    instance_id: str = ""
    """The instance this process runs; empty for a ``TenantConnection``, whose
    instances each name their own."""
    tenant_id: str
    server_host: str = "127.0.0.1"
    server_port: int = 8001
    server_name: str = "localhost"
    ca_file: str | None = None
    server_fingerprint: str | None = None
    skip_cert_verification: bool = False
    auth_token: str | None = field(default=None, repr=False)
    heartbeat_interval: float = 30.0
    """Seconds between background heartbeats; 0 disables them."""
    request_timeout: float = 30.0
    """Seconds one call may take (a sleep: its duration plus this) before the
    connection is considered dead, reset, and the call retried."""
    idle_timeout: float = 30.0
    """QUIC idle timeout: a server that stopped answering (and did not come
    back to answer with a stateless reset) is given up after this long."""
    keepalive_interval: float = 10.0
    """Seconds between QUIC keep-alive PINGs (PROTOCOL.md: every 10 s by
    default); must be below ``idle_timeout``."""
    probe_interval: float = 1.0
    """Seconds between PINGs while a call is outstanding or a PING is
    unanswered: a restarted server answers one with a stateless reset, so a
    call held open across a restart (a sleep) is retried about this long
    after the server is back. A value above ``keepalive_interval`` counts
    as ``keepalive_interval``."""
    connect_timeout: float = 10.0
    """Seconds one QUIC handshake may take."""
    reconnect_backoff: Backoff = field(
        default_factory=lambda: Backoff(initial=0.1, multiplier=2.0, maximum=1.0, jitter=0.2)
    )
    """Waits between reconnection attempts and between retries of a call."""
    give_up_after: float | None = 300.0
    """Seconds without a working connection (or of retryable errors for one
    call) before failing with ``ServerUnreachable``; None retries forever."""

    def __post_init__(self) -> None:
        for name in (
            "request_timeout",
            "idle_timeout",
            "keepalive_interval",
            "probe_interval",
            "connect_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.heartbeat_interval < 0:
            raise ValueError(f"heartbeat_interval must be >= 0, not {self.heartbeat_interval!r}")
        if self.keepalive_interval >= self.idle_timeout:
            raise ValueError("keepalive_interval must be below idle_timeout")
        if self.give_up_after is not None and self.give_up_after <= 0:
            raise ValueError(f"give_up_after must be > 0 or None, not {self.give_up_after!r}")
        if self.skip_cert_verification and (self.ca_file or self.server_fingerprint):
            raise ValueError("skip_cert_verification cannot be combined with a CA or fingerprint")

    @property
    def server_addr(self) -> str:
        """``host:port`` as ``RUNTARA_SERVER_ADDR`` writes it (IPv6 in brackets)."""
        host = f"[{self.server_host}]" if ":" in self.server_host else self.server_host
        return f"{host}:{self.server_port}"

    def quic_options(self) -> dict[str, Any]:
        """Keyword arguments for ``runtara.quic.client.connect``."""
        return {
            "server_name": self.server_name,
            "cafile": self.ca_file,
            "fingerprint": self.server_fingerprint,
            "verify": not self.skip_cert_verification,
            "idle_timeout": self.idle_timeout,
            "keepalive_interval": self.keepalive_interval,
            "probe_interval": self.probe_interval,
            "connect_timeout": self.connect_timeout,
        }

    def replace(self, **changes: Any) -> SdkConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


def config_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> SdkConfig:
    """Build the configuration from ``environ`` (``os.environ`` by default).

    ``overrides`` are ``SdkConfig`` fields (typed values, e.g.
    ``heartbeat_interval=5.0``) and win over the environment. Raises
    ``SdkConfigError`` naming the first invalid variable, ``TypeError`` for
    an unknown override.
    """
    environ = os.environ if environ is None else environ
    known = {item.name for item in fields(SdkConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown SdkConfig fields: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for variable, (parse, targets) in _VARIABLES.items():
        text = environ.get(variable, "")
        if text == "" or all(target in overrides for target in targets):
            continue
        try:
            parsed = parse(text)
        except ValueError as error:
            raise SdkConfigError(variable, str(error)) from None
        values.update(zip(targets, parsed, strict=True))
    values.update(overrides)
    for variable, name in _REQUIRED:
        if not values.get(name):
            raise SdkConfigError(variable, "must be set")
    if values.get("skip_cert_verification") and (
        values.get("ca_file") or values.get("server_fingerprint")
    ):
        raise SdkConfigError(
            "RUNTARA_SKIP_CERT_VERIFICATION",
            "cannot be true together with RUNTARA_CA_FILE or RUNTARA_SERVER_FINGERPRINT",
        )
    return SdkConfig(**values)


def parse_server_addr(text: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> ``(host, port)``; ValueError when malformed."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"expected [ipv6]:port, got {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address: {host!r}") from None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"expected host:port, got {text!r}")
        if ":" in host:
            raise ValueError(f"write IPv6 addresses in brackets ([::1]:8001), got {text!r}")
    try:
        return host, _PORT(port_text)
    except ValueError as error:
        raise ValueError(f"port {error}") from None


def _identifier(text: str) -> tuple[str]:
    if len(text.encode("utf-8")) > MAX_INSTANCE_ID_BYTES:
        raise ValueError(f"must be at most {MAX_INSTANCE_ID_BYTES} bytes")
    return (text,)


def _text(text: str) -> tuple[str]:
    return (text,)


def _existing_file(text: str) -> tuple[str]:
    if not os.path.isfile(text):
        raise ValueError(f"no such file: {text!r}")
    if not os.access(text, os.R_OK):
        raise ValueError(f"file is not readable: {text!r}")
    return (text,)


def _fingerprint(text: str) -> tuple[str]:
    return (normalize_fingerprint(text),)


def _boolean(text: str) -> tuple[bool]:
    return (boolean(text),)


def _milliseconds(minimum: int) -> Callable[[str], tuple[float]]:
    """Whole milliseconds, at least ``minimum``, as seconds."""
    parse_integer = integer(minimum)

    def parse(text: str) -> tuple[float]:
        return (parse_integer(text) / 1000,)

    return parse


_REQUIRED = (("RUNTARA_INSTANCE_ID", "instance_id"), ("RUNTARA_TENANT_ID", "tenant_id"))

_VARIABLES: dict[str, tuple[Callable[[str], tuple[Any, ...]], tuple[str, ...]]] = {
    "RUNTARA_INSTANCE_ID": (_identifier, ("instance_id",)),
    "RUNTARA_TENANT_ID": (_text, ("tenant_id",)),
    "RUNTARA_SERVER_ADDR": (parse_server_addr, ("server_host", "server_port")),
    "RUNTARA_SERVER_NAME": (_text, ("server_name",)),
    "RUNTARA_CA_FILE": (_existing_file, ("ca_file",)),
    "RUNTARA_SERVER_FINGERPRINT": (_fingerprint, ("server_fingerprint",)),
    "RUNTARA_SKIP_CERT_VERIFICATION": (_boolean, ("skip_cert_verification",)),
    "RUNTARA_AUTH_TOKEN": (_text, ("auth_token",)),
    "RUNTARA_HEARTBEAT_INTERVAL_MS": (_milliseconds(0), ("heartbeat_interval",)),
    "RUNTARA_REQUEST_TIMEOUT_MS": (_milliseconds(1), ("request_timeout",)),
}
"""Each variable: its parser (text -> values) and the fields the values go to."""
