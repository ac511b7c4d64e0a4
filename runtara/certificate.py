"""The server's TLS certificate: the operator's PEM files, or one made once and kept.

PROTOCOL.md section 1: without operator-given files the server generates a
self-signed certificate for ``localhost`` the first time it starts, stores it
(mode 0600) in its state directory and reuses it on every restart, so a
client that pinned its fingerprint keeps trusting it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

__all__ = [
    "CERTIFICATE_FILE",
    "PRIVATE_KEY_FILE",
    "CertificateError",
    "ServerCertificate",
    "fingerprint_of",
    "load_certificate",
    "load_or_create_certificate",
    "normalize_fingerprint",
]

CERTIFICATE_FILE = "tls-cert.pem"
"""Name of the generated certificate in the state directory."""

PRIVATE_KEY_FILE = "tls-key.pem"
"""Name of the generated private key in the state directory."""

_VALIDITY = timedelta(days=3650)
_BACKDATE = timedelta(days=1)
_FINGERPRINT_RE = re.compile(r"[0-9A-F]{64}")

_log = Logger()


class CertificateError(ValueError):
    """A certificate or key file cannot be used; the message names the file."""


@dataclass(frozen=True)
class ServerCertificate:
    """A server certificate with its private key, ready for ``server_configuration``."""

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes
    fingerprint: str
    """SHA-256 of the certificate's DER, uppercase hex pairs joined by ':'."""
    cert_path: Path
    key_path: Path
    chain: tuple[x509.Certificate, ...] = ()
    """Intermediate certificates that followed the first one in the PEM file."""


def fingerprint_of(certificate: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of ``certificate``'s DER in canonical form."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return _colon_pairs(digest.upper())


def normalize_fingerprint(text: str) -> str:
    """Return a SHA-256 fingerprint in canonical form (``AB:CD:...``, 32 pairs).

    Accepts upper or lower case hex, with or without ':' separators, and
    surrounding whitespace. Raises ``ValueError`` for anything else.
    """
    compact = text.strip().replace(":", "").upper()
    if not _FINGERPRINT_RE.fullmatch(compact):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {text!r}")
    return _colon_pairs(compact)


def load_certificate(cert_path: Path | str, key_path: Path | str) -> ServerCertificate:
    """Load an operator's PEM certificate (optionally followed by its chain) and key.

    Raises ``CertificateError`` naming the file that cannot be read or parsed,
    or both files when the key does not belong to the certificate.
    """
    cert_path = Path(cert_path)
    key_path = Path(key_path)
    certificates = _read_certificates(cert_path)
    private_key = _read_private_key(key_path)
    leaf = certificates[0]
    if _public_der(private_key.public_key()) != _public_der(leaf.public_key()):
        raise CertificateError(
            f"TLS private key {key_path} does not match the certificate in {cert_path}"
        )
    return ServerCertificate(
        certificate=leaf,
        private_key=private_key,
        fingerprint=fingerprint_of(leaf),
        cert_path=cert_path,
        key_path=key_path,
        chain=tuple(certificates[1:]),
    )


def load_or_create_certificate(
    state_dir: Path | str, *, now: datetime | None = None
) -> ServerCertificate:
    """Return the state directory's self-signed certificate, generating it the first time.

    The directory is created with mode 0700 when missing. The key and then
    the certificate are written atomically with mode 0600; the certificate
    file is the marker that both are complete, so an interrupted first start
    simply generates again. ``now`` (UTC, default: the wall clock) is the
    start of validity, which lasts ten years.
    """
    state_dir = Path(state_dir)
    cert_path = state_dir / CERTIFICATE_FILE
    key_path = state_dir / PRIVATE_KEY_FILE
    if cert_path.exists():
        _warn_if_readable_by_others(key_path)
        return load_certificate(cert_path, key_path)

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_key = ec.generate_private_key(ec.SECP256R1())
    certificate = _self_signed(private_key, now or datetime.now(UTC))
    _write_private(
        key_path,
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    server_certificate = ServerCertificate(
        certificate=certificate,
        private_key=private_key,
        fingerprint=fingerprint_of(certificate),
        cert_path=cert_path,
        key_path=key_path,
    )
    _log.info(
        "generated a self-signed TLS certificate {cert_path} (SHA-256 {fingerprint})",
        cert_path=str(cert_path),
        fingerprint=server_certificate.fingerprint,
    )
    return server_certificate


def _self_signed(private_key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    alternative_names = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(alternative_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private_key, hashes.SHA256())
    )


def _read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise CertificateError(
            f"cannot read TLS certificate {path}: {error.strerror or error}"
        ) from error
    except ValueError as error:
        raise CertificateError(f"no PEM certificate in {path}: {error}") from error
    return certificates


def _read_private_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CertificateError(
            f"cannot read TLS private key {path}: {error.strerror or error}"
        ) from error
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise CertificateError(
            f"no usable unencrypted PEM private key in {path}: {error}"
        ) from error
    if not isinstance(private_key, CertificateIssuerPrivateKeyTypes):
        raise CertificateError(f"unsupported private key type in {path}")
    return private_key


def _public_der(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _warn_if_readable_by_others(key_path: Path) -> None:
    try:
        mode = key_path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        _log.warn(
            "TLS private key {key_path} is accessible by other users (mode {mode})",
            key_path=str(key_path),
            mode=oct(mode & 0o777),
        )


def _colon_pairs(compact_hex: str) -> str:
    return ":".join(compact_hex[i : i + 2] for i in range(0, len(compact_hex), 2))
