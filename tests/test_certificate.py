"""The server certificate: generated once and kept, or loaded from the operator's files."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import LogLevel, globalLogPublisher

from runtara.certificate import (
    CERTIFICATE_FILE,
    PRIVATE_KEY_FILE,
    CertificateError,
    ServerCertificate,
    fingerprint_of,
    load_certificate,
    load_or_create_certificate,
    normalize_fingerprint,
)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_pem(private_key, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_generated_once_with_private_modes(tmp_path, logged):
    state_dir = tmp_path / "state" / "nested"

    created = load_or_create_certificate(state_dir)

    assert mode(state_dir) == 0o700
    assert created.cert_path == state_dir / CERTIFICATE_FILE
    assert created.key_path == state_dir / PRIVATE_KEY_FILE
    assert mode(created.cert_path) == 0o600
    assert mode(created.key_path) == 0o600
    assert sorted(p.name for p in state_dir.iterdir()) == sorted(
        [CERTIFICATE_FILE, PRIVATE_KEY_FILE]
    )
    assert any(created.fingerprint in str(event.get("fingerprint")) for event in logged)


def test_reused_on_every_restart(tmp_path):
    first = load_or_create_certificate(tmp_path)
    second = load_or_create_certificate(tmp_path)

    assert second.fingerprint == first.fingerprint
    assert second.certificate == first.certificate
    assert key_pem(second.private_key) == key_pem(first.private_key)


def test_generated_certificate_is_for_localhost_on_p256_for_ten_years(tmp_path):
    now = datetime(2030, 1, 1, tzinfo=UTC)

    created = load_or_create_certificate(tmp_path, now=now)

    certificate = created.certificate
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert isinstance(created.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(created.private_key.curve, ec.SECP256R1)
    assert certificate.not_valid_before_utc <= now
    assert certificate.not_valid_after_utc >= now + timedelta(days=3650)
    assert created.chain == ()


def test_fingerprint_is_the_sha256_of_the_der_in_colon_hex(tmp_path):
    created = load_or_create_certificate(tmp_path)

    digest = hashlib.sha256(created.certificate.public_bytes(serialization.Encoding.DER))
    assert created.fingerprint == ":".join(f"{byte:02X}" for byte in digest.digest())
    assert fingerprint_of(created.certificate) == created.fingerprint


def test_an_interrupted_first_start_generates_again(tmp_path):
    (tmp_path / PRIVATE_KEY_FILE).write_bytes(b"half written")
    (tmp_path / (PRIVATE_KEY_FILE + ".tmp")).write_bytes(b"left over")

    created = load_or_create_certificate(tmp_path)

    assert load_certificate(created.cert_path, created.key_path).fingerprint == created.fingerprint
    assert not (tmp_path / (PRIVATE_KEY_FILE + ".tmp")).exists()


def test_a_missing_key_beside_the_certificate_is_an_error(tmp_path):
    created = load_or_create_certificate(tmp_path)
    created.key_path.unlink()

    with pytest.raises(CertificateError, match=str(created.key_path)):
        load_or_create_certificate(tmp_path)


def test_a_key_readable_by_others_is_warned_about(tmp_path, logged):
    created = load_or_create_certificate(tmp_path)
    created.key_path.chmod(0o644)

    load_or_create_certificate(tmp_path)

    warnings = [e for e in logged if e.get("log_level") == LogLevel.warn]
    assert [e["key_path"] for e in warnings] == [str(created.key_path)]


def test_load_operator_files(tmp_path):
    generated = load_or_create_certificate(tmp_path / "a")

    loaded = load_certificate(str(generated.cert_path), str(generated.key_path))

    assert isinstance(loaded, ServerCertificate)
    assert loaded.fingerprint == generated.fingerprint
    assert loaded.cert_path == generated.cert_path


def test_a_chain_after_the_leaf_is_kept(tmp_path):
    leaf = load_or_create_certificate(tmp_path / "leaf")
    intermediate = load_or_create_certificate(tmp_path / "intermediate")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(leaf.cert_path.read_bytes() + intermediate.cert_path.read_bytes())

    loaded = load_certificate(bundle, leaf.key_path)

    assert loaded.certificate == leaf.certificate
    assert loaded.chain == (intermediate.certificate,)


def test_unreadable_files_are_named(tmp_path):
    generated = load_or_create_certificate(tmp_path / "a")
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")

    with pytest.raises(CertificateError, match=str(missing)):
        load_certificate(missing, generated.key_path)
    with pytest.raises(CertificateError, match=str(garbage)):
        load_certificate(garbage, generated.key_path)
    with pytest.raises(CertificateError, match=str(missing)):
        load_certificate(generated.cert_path, missing)
    with pytest.raises(CertificateError, match=str(garbage)):
        load_certificate(generated.cert_path, garbage)
    with pytest.raises(CertificateError, match=str(tmp_path / "a")):
        load_certificate(tmp_path / "a", generated.key_path)


def test_a_key_of_another_certificate_is_refused(tmp_path):
    one = load_or_create_certificate(tmp_path / "one")
    other = load_or_create_certificate(tmp_path / "other")

    with pytest.raises(CertificateError, match="does not match") as refused:
        load_certificate(one.cert_path, other.key_path)
    assert str(one.cert_path) in str(refused.value)
    assert str(other.key_path) in str(refused.value)


def test_an_encrypted_key_is_refused(tmp_path):
    generated = load_or_create_certificate(tmp_path / "a")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key_pem(generated.private_key, password=b"secret"))

    with pytest.raises(CertificateError, match=str(encrypted)):
        load_certificate(generated.cert_path, encrypted)


@pytest.mark.parametrize(
    "spelling",
    [
        "ab" * 32,
        "AB" * 32,
        ":".join(["ab"] * 32),
        "  " + ":".join(["AB"] * 32) + "\n",
    ],
)
def test_normalize_fingerprint(spelling):
    assert normalize_fingerprint(spelling) == ":".join(["AB"] * 32)


@pytest.mark.parametrize(
    "text", ["", "AB" * 31, "AB" * 33, "ZZ" * 32, "AB-" * 32, "sha256:" + "AB" * 32]
)
def test_normalize_fingerprint_refuses_anything_else(text):
    with pytest.raises(ValueError):
        normalize_fingerprint(text)
