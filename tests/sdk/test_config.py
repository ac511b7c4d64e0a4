"""RUNTARA_* variables -> SdkConfig; every bad value names its variable."""

from __future__ import annotations

import pytest

from runtara.sdk import Backoff, SdkConfig, SdkConfigError, config_from_env
from runtara.sdk.config import parse_server_addr

FINGERPRINT = ":".join(["AB"] * 32)
REQUIRED = {"RUNTARA_INSTANCE_ID": "order-17", "RUNTARA_TENANT_ID": "shop"}


def config(**variables: str) -> SdkConfig:
    return config_from_env({**REQUIRED, **variables})


def error_for(**variables: str) -> SdkConfigError:
    with pytest.raises(SdkConfigError) as caught:
        config_from_env({**REQUIRED, **variables})
    return caught.value


def test_defaults():
    result = config()
    assert result.instance_id == "order-17"
    assert result.tenant_id == "shop"
    assert (result.server_host, result.server_port) == ("127.0.0.1", 8001)
    assert result.server_name == "localhost"
    assert result.ca_file is None and result.server_fingerprint is None
    assert result.skip_cert_verification is False
    assert result.auth_token is None
    assert result.heartbeat_interval == 30.0
    assert result.request_timeout == 30.0
    assert result.quic_options()["verify"] is True


@pytest.mark.parametrize("variable", ["RUNTARA_INSTANCE_ID", "RUNTARA_TENANT_ID"])
@pytest.mark.parametrize("value", [None, ""])
def test_instance_and_tenant_are_required(variable, value):
    environ = dict(REQUIRED)
    if value is None:
        del environ[variable]
    else:
        environ[variable] = value
    with pytest.raises(SdkConfigError) as caught:
        config_from_env(environ)
    assert caught.value.variable == variable
    assert str(caught.value) == f"{variable}: must be set"


def test_an_instance_id_longer_than_the_protocol_allows_is_refused():
    error = error_for(RUNTARA_INSTANCE_ID="x" * 257)
    assert str(error).startswith("RUNTARA_INSTANCE_ID: ")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.5:9000", "10.0.0.5", 9000),
        ("[::1]:8001", "::1", 8001),
        ("[2001:db8::7]:443", "2001:db8::7", 443),
        ("runtara.internal:8001", "runtara.internal", 8001),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_server_addr(text, host, port):
    result = config(RUNTARA_SERVER_ADDR=text)
    assert (result.server_host, result.server_port) == (host, port)
    assert parse_server_addr(result.server_addr) == (host, port)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        ":8001",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "::1:8001",
        "[::1]",
        "[::1]8001",
        "[not-v6]:8001",
        "127.0.0.1:-1",
    ],
)
def test_bad_server_addr_names_the_variable(text):
    assert error_for(RUNTARA_SERVER_ADDR=text).variable == "RUNTARA_SERVER_ADDR"
    assert str(error_for(RUNTARA_SERVER_ADDR=text)).startswith("RUNTARA_SERVER_ADDR: ")


def test_server_name():
    assert config(RUNTARA_SERVER_NAME="runtara.example").quic_options()["server_name"] == (
        "runtara.example"
    )


def test_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    result = config(RUNTARA_CA_FILE=str(ca))
    assert result.ca_file == str(ca)
    assert result.quic_options()["cafile"] == str(ca)


def test_a_missing_ca_file_names_the_variable(tmp_path):
    error = error_for(RUNTARA_CA_FILE=str(tmp_path / "absent.pem"))
    assert error.variable == "RUNTARA_CA_FILE"
    assert "no such file" in str(error)


def test_fingerprint_is_normalized():
    result = config(RUNTARA_SERVER_FINGERPRINT=FINGERPRINT.replace(":", "").lower())
    assert result.server_fingerprint == FINGERPRINT
    assert result.quic_options()["fingerprint"] == FINGERPRINT


def test_a_bad_fingerprint_names_the_variable():
    assert error_for(RUNTARA_SERVER_FINGERPRINT="AB:CD").variable == "RUNTARA_SERVER_FINGERPRINT"


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False), ("no", False)],
)
def test_skip_cert_verification(text, value):
    result = config(RUNTARA_SKIP_CERT_VERIFICATION=text)
    assert result.skip_cert_verification is value
    assert result.quic_options()["verify"] is not value


def test_a_bad_boolean_names_the_variable():
    error = error_for(RUNTARA_SKIP_CERT_VERIFICATION="maybe")
    assert error.variable == "RUNTARA_SKIP_CERT_VERIFICATION"


def test_skipping_verification_cannot_be_combined_with_a_pin():
    error = error_for(RUNTARA_SKIP_CERT_VERIFICATION="true", RUNTARA_SERVER_FINGERPRINT=FINGERPRINT)
    assert error.variable == "RUNTARA_SKIP_CERT_VERIFICATION"


def test_auth_token_is_not_in_the_repr():
    result = config(RUNTARA_AUTH_TOKEN="s3cret")
    assert result.auth_token == "s3cret"
    assert "s3cret" not in repr(result)


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("1500", 1.5), ("30000", 30.0)])
def test_heartbeat_interval(text, seconds):
    assert config(RUNTARA_HEARTBEAT_INTERVAL_MS=text).heartbeat_interval == seconds


@pytest.mark.parametrize("text", ["-1", "1.5", "soon", "1e3"])
def test_a_bad_heartbeat_interval_names_the_variable(text):
    assert error_for(RUNTARA_HEARTBEAT_INTERVAL_MS=text).variable == (
        "RUNTARA_HEARTBEAT_INTERVAL_MS"
    )


def test_request_timeout():
    assert config(RUNTARA_REQUEST_TIMEOUT_MS="2500").request_timeout == 2.5


@pytest.mark.parametrize("text", ["0", "-5", "fast"])
def test_a_bad_request_timeout_names_the_variable(text):
    assert error_for(RUNTARA_REQUEST_TIMEOUT_MS=text).variable == "RUNTARA_REQUEST_TIMEOUT_MS"


def test_empty_variables_count_as_unset():
    result = config(RUNTARA_SERVER_ADDR="", RUNTARA_HEARTBEAT_INTERVAL_MS="", RUNTARA_CA_FILE="")
    assert result.server_port == 8001
    assert result.heartbeat_interval == 30.0
    assert result.ca_file is None


def test_overrides_win_over_the_environment():
    backoff = Backoff(initial=0.5, maximum=1.0)
    result = config_from_env(
        {**REQUIRED, "RUNTARA_SERVER_ADDR": "not an address", "RUNTARA_HEARTBEAT_INTERVAL_MS": "7"},
        server_host="::1",
        server_port=9001,
        heartbeat_interval=0,
        reconnect_backoff=backoff,
        idle_timeout=3.0,
        keepalive_interval=1.0,
    )
    assert result.server_addr == "[::1]:9001"
    assert result.heartbeat_interval == 0
    assert result.reconnect_backoff is backoff
    assert result.quic_options()["idle_timeout"] == 3.0


def test_an_unknown_override_is_a_type_error():
    with pytest.raises(TypeError, match="unknown SdkConfig fields: colour"):
        config_from_env(REQUIRED, colour="blue")


def test_the_keepalive_must_be_shorter_than_the_idle_timeout():
    with pytest.raises(ValueError, match="keepalive_interval"):
        config_from_env(REQUIRED, idle_timeout=1.0, keepalive_interval=1.0)
