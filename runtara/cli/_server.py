"""Where this environment's runtara-core is, and whether it answers (``runtara health``).

The server's state directory, certificate and address are resolved from
the same variables ``twistd runtara-core`` reads (``RUNTARA_STATE_DIR``,
``RUNTARA_TLS_CERT``, ``RUNTARA_QUIC_HOST``, ``RUNTARA_QUIC_PORT``). The
server is asked for ``health`` over QUIC, pinned to the certificate's
fingerprint when the certificate exists: an answer means this environment's
server runs there, and a workflow given that certificate will trust it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from runtara.config import config_from_env
from runtara.settings import ConfigurationError

__all__ = ["PROBE_TIMEOUT_SECONDS", "ServerCheck", "look_for_server"]

PROBE_TIMEOUT_SECONDS = 2.0
"""How long ``runtara health`` waits for the server's answer."""

_SERVER_VARIABLES = (
    "RUNTARA_STATE_DIR",
    "XDG_STATE_HOME",
    "HOME",
    "RUNTARA_QUIC_HOST",
    "RUNTARA_QUIC_PORT",
    "RUNTARA_TLS_CERT",
    "RUNTARA_TLS_KEY",
)


@dataclass(frozen=True)
class ServerCheck:
    """What ``look_for_server`` found.

    ``fingerprint`` is None while the certificate does not exist (the server
    makes it on its first start) or cannot be read (``certificate_problem``
    says which). ``answers``: a server answered at
    ``address``; ``version``, ``protocol`` and ``database`` are from its
    ``health`` answer. ``problem`` says why there is no good answer, or what
    is wrong with the one there is.
    """

    state_dir: Path | None
    certificate: Path | None
    fingerprint: str | None
    certificate_problem: str | None
    address: str | None
    answers: bool = False
    version: str | None = None
    protocol: int | None = None
    database: str | None = None
    problem: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "state_dir": None if self.state_dir is None else str(self.state_dir),
            "certificate": {
                "path": None if self.certificate is None else str(self.certificate),
                "fingerprint": self.fingerprint,
                "problem": self.certificate_problem,
            },
            "server": {
                "address": self.address,
                "answers": self.answers,
                "version": self.version,
                "protocol": self.protocol,
                "database": self.database,
                "problem": self.problem,
            },
        }

    def lines(self) -> list[tuple[str, str]]:
        """``(label, value)`` lines for the ``health`` table."""
        if self.certificate is None:
            certificate = "-"
        elif self.certificate_problem is not None:
            certificate = f"{self.certificate} ({self.certificate_problem})"
        else:
            certificate = str(self.certificate)
        if self.answers and self.problem is None:
            server = (
                f"runtara-core {self.version} answers on {self.address}"
                f" (protocol {self.protocol}, database {self.database})"
            )
        else:
            server = self.problem or "-"
        return [
            ("state directory", "-" if self.state_dir is None else str(self.state_dir)),
            ("certificate", certificate),
            ("fingerprint", self.fingerprint or "-"),
            ("server", server),
        ]


async def look_for_server(environ: Mapping[str, str], reactor: Any) -> ServerCheck:
    """Find this environment's server from ``environ`` and ask it for ``health``."""
    relevant = {name: environ[name] for name in _SERVER_VARIABLES if name in environ}
    try:
        # Only where it listens matters here, not whether it may listen there.
        config = config_from_env(relevant, allow_unauthenticated=True)
    except ConfigurationError as error:
        return ServerCheck(None, None, None, None, None, problem=f"cannot tell: {error}")
    certificate = config.tls_cert or config.state_dir / _certificate_file()
    fingerprint, certificate_problem = _fingerprint(certificate)
    host = _reachable(config.quic_host)
    address = f"[{host}]:{config.quic_port}" if ":" in host else f"{host}:{config.quic_port}"
    found = ServerCheck(config.state_dir, certificate, fingerprint, certificate_problem, address)
    if config.quic_port == 0:
        return _with(found, problem="RUNTARA_QUIC_PORT is 0: the server takes any free port")
    return await _ask(found, reactor, host, config.quic_port)


async def _ask(found: ServerCheck, reactor: Any, host: str, port: int) -> ServerCheck:
    from runtara.client import RuntaraClient
    from runtara.quic.client import CertificateMismatch, ConnectTimeout, QuicConnectionError

    verification: dict[str, Any] = (
        {"fingerprint": found.fingerprint} if found.fingerprint else {"verify": False}
    )
    try:
        client = await RuntaraClient.connect(
            reactor,
            host,
            port,
            connect_timeout=PROBE_TIMEOUT_SECONDS,
            keepalive_interval=0,
            **verification,
        )
    except CertificateMismatch as error:
        return _with(
            found,
            answers=True,
            problem=f"a server answers on {found.address}, but its certificate is not"
            f" {found.certificate} (its SHA-256 fingerprint is {error.actual})",
        )
    except ConnectTimeout:
        return _with(
            found, problem=f"no answer on {found.address} within {PROBE_TIMEOUT_SECONDS:g} s"
        )
    except (QuicConnectionError, OSError) as error:
        return _with(found, problem=f"no runtara-core on {found.address}: {error}")
    answer: Deferred[dict[str, Any]] = Deferred.fromCoroutine(client.call("health", {}))
    answer.addTimeout(PROBE_TIMEOUT_SECONDS, reactor)
    try:
        health = await answer
    except Exception as error:
        return _with(found, answers=True, problem=f"{found.address} answers, but: {error}")
    finally:
        await client.close()
    return _with(
        found,
        answers=True,
        version=str(health.get("version")),
        protocol=health.get("protocol"),
        database=str(health.get("database")),
    )


def _with(found: ServerCheck, **changes: Any) -> ServerCheck:
    return ServerCheck(**{**found.__dict__, **changes})


def _certificate_file() -> str:
    from runtara.certificate import CERTIFICATE_FILE

    return CERTIFICATE_FILE


def _fingerprint(certificate: Path) -> tuple[str | None, str | None]:
    """The SHA-256 fingerprint of the first certificate in the PEM file, or why there is none."""
    from cryptography import x509

    from runtara.certificate import fingerprint_of

    try:
        data = certificate.read_bytes()
    except FileNotFoundError:
        return None, "not there yet: the server makes it when it first starts"
    except OSError as error:
        return None, f"unreadable: {error.strerror}"
    try:
        return fingerprint_of(x509.load_pem_x509_certificate(data)), None
    except ValueError:
        return None, "not a PEM certificate"


def _reachable(host: str) -> str:
    """Where to reach a server listening on ``host``: loopback for every interface."""
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host
