"""Configuration: every variable and option, database URLs, tenant tokens."""

from __future__ import annotations

from pathlib import Path

import psycopg2.extensions
import pytest
from twisted.application.service import IServiceCollection

from runtara.config import SETTINGS, Config, ConfigError, config_from_env, default_state_dir
from runtara.database_url import DatabaseURL, embedded_sqlite, parse_database_url
from runtara.tap import Options, makeService

MiB = 1024 * 1024


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def environ(home: Path) -> dict[str, str]:
    """An environment with no runtara variable and a home of its own."""
    return {"HOME": str(home)}


@pytest.fixture
def pem_files(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and a key file (their content is checked by the server, not here)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate\n")
    key.write_text("key\n")
    return cert, key


def config_error(environ: dict[str, str], **overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_from_env(environ, **overrides)
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"{caught.value.variable}: {caught.value.message}"
    return caught.value


# Defaults


def test_defaults(environ: dict[str, str], home: Path) -> None:
    config = config_from_env(environ)
    state_dir = home / ".local" / "state" / "runtara"
    assert config == Config(database_url=embedded_sqlite(state_dir), state_dir=state_dir)
    assert config.quic_host == "127.0.0.1"
    assert config.quic_port == 8001
    assert config.max_concurrent_instances == 32
    assert config.max_message_bytes == 64 * MiB
    assert config.tls_cert is None and config.tls_key is None
    assert dict(config.auth_tokens) == {}
    assert config.db_pool_size == 8
    assert (config.db_lock_timeout_ms, config.db_statement_timeout_ms) == (5000, 15000)
    assert config.workers == 1
    assert config.embedded_database
    assert config.database_url.engine == "sqlite"
    assert config.database_url.sqlite_path == state_dir / "runtara.db"


def test_state_dir_follows_xdg_state_home(environ: dict[str, str], tmp_path: Path) -> None:
    environ["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    config = config_from_env(environ)
    assert config.state_dir == tmp_path / "xdg" / "runtara"
    assert config.database_url.sqlite_path == tmp_path / "xdg" / "runtara" / "runtara.db"


def test_relative_xdg_state_home_is_ignored(environ: dict[str, str], home: Path) -> None:
    environ["XDG_STATE_HOME"] = "relative/state"
    assert default_state_dir(environ) == home / ".local" / "state" / "runtara"


def test_default_database_does_not_depend_on_the_current_directory(
    environ: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = []
    for directory in (tmp_path / "a", tmp_path / "b"):
        directory.mkdir()
        monkeypatch.chdir(directory)
        urls.append(config_from_env(environ).database_url)
    assert urls[0] == urls[1]


# Valid values


@pytest.mark.parametrize(
    ("variable", "text", "field", "expected"),
    [
        ("RUNTARA_QUIC_HOST", "127.0.0.1", "quic_host", "127.0.0.1"),
        ("RUNTARA_QUIC_HOST", "127.0.0.2", "quic_host", "127.0.0.2"),
        ("RUNTARA_QUIC_HOST", " ::1 ", "quic_host", "::1"),
        ("RUNTARA_QUIC_PORT", "0", "quic_port", 0),
        ("RUNTARA_QUIC_PORT", "65535", "quic_port", 65535),
        ("RUNTARA_QUIC_PORT", " 9000 ", "quic_port", 9000),
        ("RUNTARA_MAX_CONCURRENT_INSTANCES", "1", "max_concurrent_instances", 1),
        ("RUNTARA_MAX_CONCURRENT_INSTANCES", "1000", "max_concurrent_instances", 1000),
        ("RUNTARA_MAX_MESSAGE_BYTES", "1", "max_message_bytes", 1),
        ("RUNTARA_MAX_MESSAGE_BYTES", str(2**32 - 1), "max_message_bytes", 2**32 - 1),
        ("RUNTARA_MAX_BUFFERED_BYTES", "134217728", "max_buffered_bytes", 128 * MiB),
        ("RUNTARA_DB_POOL_SIZE", "1", "db_pool_size", 1),
        ("RUNTARA_DB_POOL_SIZE", "20", "db_pool_size", 20),
        ("RUNTARA_DB_LOCK_TIMEOUT_MS", "0", "db_lock_timeout_ms", 0),
        ("RUNTARA_DB_LOCK_TIMEOUT_MS", "250", "db_lock_timeout_ms", 250),
        ("RUNTARA_DB_STATEMENT_TIMEOUT_MS", "0", "db_statement_timeout_ms", 0),
        ("RUNTARA_DB_STATEMENT_TIMEOUT_MS", "60000", "db_statement_timeout_ms", 60000),
        ("RUNTARA_WORKERS", "1", "workers", 1),
        ("RUNTARA_WORKERS", "4", "workers", 4),
        ("RUNTARA_WORKERS", "64", "workers", 64),
        ("RUNTARA_ALLOW_UNAUTHENTICATED", "true", "allow_unauthenticated", True),
        ("RUNTARA_ALLOW_UNAUTHENTICATED", " Yes ", "allow_unauthenticated", True),
        ("RUNTARA_ALLOW_UNAUTHENTICATED", "0", "allow_unauthenticated", False),
        ("RUNTARA_ALLOW_UNAUTHENTICATED", "off", "allow_unauthenticated", False),
    ],
)
def test_valid_values(
    environ: dict[str, str], variable: str, text: str, field: str, expected: object
) -> None:
    environ[variable] = text
    assert getattr(config_from_env(environ), field) == expected


def test_state_dir_is_made_absolute(
    environ: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ["RUNTARA_STATE_DIR"] = "state"
    config = config_from_env(environ)
    assert config.state_dir == tmp_path / "state"
    assert config.database_url.sqlite_path == tmp_path / "state" / "runtara.db"
    assert config.embedded_database


def test_database_url_replaces_the_embedded_database(
    environ: dict[str, str], tmp_path: Path
) -> None:
    environ["RUNTARA_DATABASE_URL"] = f"sqlite://{tmp_path}/other.db"
    config = config_from_env(environ)
    assert config.database_url.sqlite_path == tmp_path / "other.db"
    assert not config.embedded_database


def test_postgresql_database(environ: dict[str, str]) -> None:
    environ["RUNTARA_DATABASE_URL"] = "postgresql://root@127.0.0.1:5432/postgres"
    config = config_from_env(environ)
    assert config.database_url.engine == "postgresql"
    assert not config.embedded_database


def test_certificate_and_key(environ: dict[str, str], pem_files: tuple[Path, Path]) -> None:
    cert, key = pem_files
    environ.update(RUNTARA_TLS_CERT=str(cert), RUNTARA_TLS_KEY=str(key))
    config = config_from_env(environ)
    assert (config.tls_cert, config.tls_key) == (cert, key)


def test_empty_variables_count_as_not_given(environ: dict[str, str]) -> None:
    for setting in SETTINGS:
        environ[setting.variable] = ""
    assert config_from_env(environ) == config_from_env({"HOME": environ["HOME"]})


# Invalid values: one line naming the variable


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("RUNTARA_QUIC_PORT", "99999", "must be an integer from 0 to 65535, got '99999'"),
        ("RUNTARA_QUIC_PORT", "abc", "must be an integer from 0 to 65535, got 'abc'"),
        ("RUNTARA_QUIC_PORT", "-1", "must be an integer from 0 to 65535, got '-1'"),
        ("RUNTARA_QUIC_PORT", "80.5", "must be an integer from 0 to 65535, got '80.5'"),
        ("RUNTARA_QUIC_HOST", "localhost", "must be an IP address such as 0.0.0.0 or ::, got"),
        ("RUNTARA_MAX_CONCURRENT_INSTANCES", "-1", "must be an integer >= 1, got '-1'"),
        ("RUNTARA_MAX_CONCURRENT_INSTANCES", "0", "must be an integer >= 1, got '0'"),
        ("RUNTARA_MAX_CONCURRENT_INSTANCES", "abc", "must be an integer >= 1, got 'abc'"),
        ("RUNTARA_MAX_MESSAGE_BYTES", "0", "must be an integer from 1 to 4294967295, got '0'"),
        ("RUNTARA_MAX_MESSAGE_BYTES", str(2**32), "must be an integer from 1 to 4294967295"),
        ("RUNTARA_MAX_MESSAGE_BYTES", "64MiB", "must be an integer from 1 to 4294967295"),
        ("RUNTARA_MAX_BUFFERED_BYTES", "0", "must be an integer >= 1, got '0'"),
        ("RUNTARA_MAX_BUFFERED_BYTES", "1000", "must be at least one request of the largest"),
        ("RUNTARA_DB_POOL_SIZE", "0", "must be an integer >= 1, got '0'"),
        ("RUNTARA_DB_POOL_SIZE", "-3", "must be an integer >= 1, got '-3'"),
        ("RUNTARA_DB_LOCK_TIMEOUT_MS", "-1", "must be an integer >= 0, got '-1'"),
        ("RUNTARA_DB_STATEMENT_TIMEOUT_MS", "5s", "must be an integer >= 0, got '5s'"),
        ("RUNTARA_WORKERS", "0", "must be an integer from 1 to 64, got '0'"),
        ("RUNTARA_WORKERS", "65", "must be an integer from 1 to 64, got '65'"),
        ("RUNTARA_ALLOW_UNAUTHENTICATED", "maybe", "must be true or false, got 'maybe'"),
        ("RUNTARA_DATABASE_URL", "mysql://u@h/db", "unsupported database URL scheme 'mysql'"),
        ("RUNTARA_DATABASE_URL", "runtara.db", "not a database URL"),
        ("RUNTARA_DATABASE_URL", "sqlite://host/x.db", "a sqlite: URL names no host"),
        ("RUNTARA_DATABASE_URL", "postgresql://h:99999/db", "the port of a postgresql: URL"),
        ("RUNTARA_TLS_CERT", "/nonexistent/cert.pem", "cannot read '/nonexistent/cert.pem'"),
        ("RUNTARA_AUTH_TOKENS", "tenant-a", "entry 1 is not tenant=token"),
        ("RUNTARA_AUTH_TOKENS", "a=1,=2", "entry 2 is not tenant=token"),
        ("RUNTARA_AUTH_TOKENS", "a=", "entry 1 is not tenant=token"),
        ("RUNTARA_AUTH_TOKENS", "a=1,a=2", "entry 2: tenant 'a' already has a token"),
        ("RUNTARA_AUTH_TOKENS", " , ", "names no tenant=token pair"),
        ("RUNTARA_AUTH_TOKENS", "@/nonexistent/tokens", "cannot read token file"),
    ],
)
def test_invalid_values_name_the_variable(
    environ: dict[str, str],
    pem_files: tuple[Path, Path],
    variable: str,
    text: str,
    message: str,
) -> None:
    environ.update(RUNTARA_TLS_CERT=str(pem_files[0]), RUNTARA_TLS_KEY=str(pem_files[1]))
    environ[variable] = text
    error = config_error(environ)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: {message}")


def test_the_documented_example(environ: dict[str, str]) -> None:
    environ["RUNTARA_QUIC_PORT"] = "99999"
    assert str(config_error(environ)) == (
        "RUNTARA_QUIC_PORT: must be an integer from 0 to 65535, got '99999'"
    )


@pytest.mark.parametrize(("given", "missing"), [(0, "RUNTARA_TLS_KEY"), (1, "RUNTARA_TLS_CERT")])
def test_certificate_and_key_come_together(
    environ: dict[str, str], pem_files: tuple[Path, Path], given: int, missing: str
) -> None:
    variable = ("RUNTARA_TLS_CERT", "RUNTARA_TLS_KEY")[given]
    environ[variable] = str(pem_files[given])
    error = config_error(environ)
    assert str(error) == f"{variable}: needs {missing} too (give both or neither)"


def test_unreadable_certificate(environ: dict[str, str], pem_files: tuple[Path, Path]) -> None:
    directory = pem_files[0].parent
    environ.update(RUNTARA_TLS_CERT=str(directory), RUNTARA_TLS_KEY=str(pem_files[1]))
    assert str(config_error(environ)) == (
        f"RUNTARA_TLS_CERT: cannot read '{directory}': Is a directory"
    )


def test_a_bad_url_never_shows_its_password(environ: dict[str, str]) -> None:
    environ["RUNTARA_DATABASE_URL"] = "postgresql://user:s3cret@host:99999/db"
    assert "s3cret" not in str(config_error(environ))


# Safe by default: loopback unless tenant tokens guard the server


def test_with_tokens_the_default_host_is_every_interface(environ: dict[str, str]) -> None:
    environ["RUNTARA_AUTH_TOKENS"] = "tenant-a=secret"
    config = config_from_env(environ)
    assert config.quic_host == "0.0.0.0"
    assert not config.unauthenticated_exposure


@pytest.mark.parametrize("host", ["127.0.0.1", "::", "192.0.2.7"])
def test_with_tokens_a_named_host_is_kept(environ: dict[str, str], host: str) -> None:
    environ.update(RUNTARA_AUTH_TOKENS="tenant-a=secret", RUNTARA_QUIC_HOST=host)
    assert config_from_env(environ).quic_host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_a_reachable_host_without_tokens_is_refused(environ: dict[str, str], host: str) -> None:
    environ["RUNTARA_QUIC_HOST"] = host
    error = config_error(environ)
    assert error.variable == "RUNTARA_QUIC_HOST"
    assert error.message.startswith(f"{host} is not a loopback address")
    assert "RUNTARA_AUTH_TOKENS" in error.message
    assert "--allow-unauthenticated (RUNTARA_ALLOW_UNAUTHENTICATED=true)" in error.message


def test_the_refusal_names_the_host_option(environ: dict[str, str]) -> None:
    error = config_error(environ, quic_host="0.0.0.0")
    assert error.variable == "--host"


@pytest.mark.parametrize(
    ("variables", "overrides"),
    [({"RUNTARA_ALLOW_UNAUTHENTICATED": "true"}, {}), ({}, {"allow_unauthenticated": True})],
    ids=["variable", "option"],
)
def test_a_reachable_host_without_tokens_can_be_allowed(
    environ: dict[str, str], variables: dict[str, str], overrides: dict[str, object]
) -> None:
    environ.update(RUNTARA_QUIC_HOST="0.0.0.0", **variables)
    config = config_from_env(environ, **overrides)
    assert config.quic_host == "0.0.0.0"
    assert config.allow_unauthenticated
    assert config.unauthenticated_exposure


def test_allowing_changes_nothing_on_loopback(environ: dict[str, str]) -> None:
    environ["RUNTARA_ALLOW_UNAUTHENTICATED"] = "true"
    config = config_from_env(environ)
    assert config.quic_host == "127.0.0.1"
    assert not config.unauthenticated_exposure


# Overrides (what the twistd options give)


def test_overrides_win_over_the_environment(environ: dict[str, str], tmp_path: Path) -> None:
    environ.update(RUNTARA_QUIC_PORT="9000", RUNTARA_STATE_DIR=str(tmp_path / "env"))
    config = config_from_env(environ, quic_port="9001", state_dir=None, quic_host="")
    assert config.quic_port == 9001
    assert config.state_dir == tmp_path / "env"
    assert config.quic_host == "127.0.0.1"


def test_typed_overrides(environ: dict[str, str], tmp_path: Path) -> None:
    url = parse_database_url("postgresql://u:pw@h/db")
    config = config_from_env(
        environ,
        quic_port=0,
        state_dir=tmp_path,
        auth_tokens={"tenant-a": "secret"},
        database_url=url,
        max_concurrent_instances=2,
    )
    assert (config.quic_port, config.state_dir, config.max_concurrent_instances) == (
        0,
        tmp_path,
        2,
    )
    assert dict(config.auth_tokens) == {"tenant-a": "secret"}
    assert config.database_url is url


def test_a_bad_override_names_the_option(environ: dict[str, str]) -> None:
    environ["RUNTARA_QUIC_PORT"] = "9000"
    error = config_error(environ, quic_port="99999")
    assert str(error) == "--port: must be an integer from 0 to 65535, got '99999'"
    assert str(config_error(environ, max_concurrent_instances=-1)).startswith(
        "--max-concurrent-instances: must be an integer >= 1"
    )


def test_certificate_pair_named_as_options(
    environ: dict[str, str], pem_files: tuple[Path, Path]
) -> None:
    error = config_error(environ, tls_cert=str(pem_files[0]))
    assert str(error) == "--tls-cert: needs --tls-key too (give both or neither)"


def test_unknown_override_is_a_programming_error(environ: dict[str, str]) -> None:
    with pytest.raises(TypeError, match="quic_prot"):
        config_from_env(environ, quic_prot="1")


def test_repr_shows_no_secret(environ: dict[str, str]) -> None:
    environ.update(
        RUNTARA_DATABASE_URL="postgresql://user:s3cret@host/db",
        RUNTARA_AUTH_TOKENS="tenant-a=t0ken",
    )
    shown = repr(config_from_env(environ))
    assert "s3cret" not in shown and "t0ken" not in shown
    assert "postgresql://user:***@host/db" in shown


def test_repr_shows_no_admin_token(environ: dict[str, str]) -> None:
    environ["RUNTARA_ADMIN_TOKEN"] = "adm1n-t0ken"
    config = config_from_env(environ)
    assert config.admin_token == "adm1n-t0ken"
    assert "adm1n-t0ken" not in repr(config)


# The management HTTP server


def test_http_defaults_to_loopback_port_8002_without_a_token(environ: dict[str, str]) -> None:
    config = config_from_env(environ)
    assert (config.http_host, config.http_port, config.admin_token) == ("127.0.0.1", 8002, None)


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0), ("9000", 9000), ("off", None), ("OFF", None)]
)
def test_http_port(environ: dict[str, str], text: str, expected: int | None) -> None:
    environ["RUNTARA_HTTP_PORT"] = text
    assert config_from_env(environ).http_port == expected


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("RUNTARA_HTTP_PORT", "65536", "must be a port from 0 to 65535 or off, got '65536'"),
        ("RUNTARA_HTTP_PORT", "no", "must be a port from 0 to 65535 or off, got 'no'"),
        ("RUNTARA_HTTP_HOST", "localhost", "must be an IP address"),
        ("RUNTARA_ADMIN_TOKEN", "two words", "must be printable ASCII without spaces"),
    ],
)
def test_invalid_http_settings(
    environ: dict[str, str], variable: str, text: str, message: str
) -> None:
    environ[variable] = text
    assert message in config_error(environ).message


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_a_non_loopback_http_host_needs_a_token(environ: dict[str, str], host: str) -> None:
    environ["RUNTARA_HTTP_HOST"] = host
    error = config_error(environ)
    assert error.variable == "RUNTARA_HTTP_HOST"
    assert error.message == (
        f"{host} is not a loopback address: the management HTTP server needs"
        " RUNTARA_ADMIN_TOKEN to listen there"
    )
    environ["RUNTARA_ADMIN_TOKEN"] = "t0ken"
    assert config_from_env(environ).http_host == host


def test_a_non_loopback_http_host_is_fine_when_http_is_off(environ: dict[str, str]) -> None:
    environ.update(RUNTARA_HTTP_HOST="0.0.0.0", RUNTARA_HTTP_PORT="off")
    assert config_from_env(environ).http_port is None


def test_a_non_loopback_http_host_given_as_option_names_the_option(
    environ: dict[str, str],
) -> None:
    error = config_error(environ, http_host="0.0.0.0")
    assert str(error) == (
        "--http-host: 0.0.0.0 is not a loopback address: the management HTTP server needs"
        " --admin-token to listen there"
    )


# twistd options


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> pytest.MonkeyPatch:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.variable, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    return monkeypatch


def parse_options(*arguments: str) -> Options:
    options = Options()
    options.parseOptions(list(arguments))
    return options


def test_options_default_to_the_environment(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("RUNTARA_QUIC_PORT", "9000")
    clean_environment.setenv("RUNTARA_DB_POOL_SIZE", "3")
    config = parse_options().config
    assert (config.quic_port, config.db_pool_size) == (9000, 3)


def test_options_override_the_environment(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path, pem_files: tuple[Path, Path]
) -> None:
    clean_environment.setenv("RUNTARA_QUIC_PORT", "9000")
    tokens = tmp_path / "tokens"
    tokens.write_text("tenant-a=secret\n")
    config = parse_options(
        "--database=postgresql://root@127.0.0.1/postgres",
        "--host=127.0.0.1",
        "--port=0",
        "--max-concurrent-instances=4",
        "--max-message-bytes=1024",
        f"--state-dir={tmp_path / 'state'}",
        f"--tls-cert={pem_files[0]}",
        f"--tls-key={pem_files[1]}",
        f"--auth-tokens=@{tokens}",
        "--db-pool-size=2",
        "--workers=3",
    ).config
    assert config == Config(
        database_url=parse_database_url("postgresql://root@127.0.0.1/postgres"),
        quic_host="127.0.0.1",
        quic_port=0,
        max_concurrent_instances=4,
        max_message_bytes=1024,
        state_dir=tmp_path / "state",
        tls_cert=pem_files[0],
        tls_key=pem_files[1],
        auth_tokens={"tenant-a": "secret"},
        db_pool_size=2,
        workers=3,
    )


@pytest.mark.parametrize(
    ("arguments", "variables", "message"),
    [
        (["--port", "99999"], {}, "--port: must be an integer from 0 to 65535, got '99999'"),
        ([], {"RUNTARA_QUIC_PORT": "99999"}, "RUNTARA_QUIC_PORT: must be an integer from 0"),
        (["--database", "mysql://h/db"], {}, "--database: unsupported database URL scheme"),
    ],
)
def test_invalid_options_exit_with_one_line(
    clean_environment: pytest.MonkeyPatch,
    arguments: list[str],
    variables: dict[str, str],
    message: str,
) -> None:
    for name, value in variables.items():
        clean_environment.setenv(name, value)
    with pytest.raises(SystemExit) as caught:
        parse_options(*arguments)
    assert str(caught.value.code).startswith(f"runtara-core: {message}")
    assert "\n" not in str(caught.value.code)


def test_allow_unauthenticated_is_a_switch(clean_environment: pytest.MonkeyPatch) -> None:
    config = parse_options("--host=0.0.0.0", "--allow-unauthenticated").config
    assert (config.quic_host, config.allow_unauthenticated) == ("0.0.0.0", True)
    with pytest.raises(SystemExit) as caught:
        parse_options("--host=0.0.0.0")
    assert caught.value.code.startswith("runtara-core: --host: 0.0.0.0 is not a loopback")


def test_an_absent_switch_leaves_the_variable_in_force(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("RUNTARA_ALLOW_UNAUTHENTICATED", "true")
    assert parse_options("--host=::").config.allow_unauthenticated


def test_every_setting_has_an_option_naming_its_variable_and_default() -> None:
    options = Options()
    for setting in SETTINGS:
        help_text = options.docs[setting.option]
        assert setting.variable in help_text
        assert f"default: {setting.default}" in help_text
    assert len(SETTINGS) == len(Config.__dataclass_fields__)


def test_make_service_builds_an_unstarted_service_tree(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = parse_options("--host=127.0.0.1", "--port=0", f"--state-dir={tmp_path / 'state'}")
    built = makeService(options)
    assert IServiceCollection.providedBy(built)
    assert not built.running


# Tenant token files


def test_token_file(environ: dict[str, str], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "# tenants of the staging cluster\n"
        "\n"
        "tenant-a=c2VjcmV0==\n"
        "  tenant-b = with spaces around  \n"
        "   # indented comment\n"
    )
    environ["RUNTARA_AUTH_TOKENS"] = f"@{tokens}"
    assert dict(config_from_env(environ).auth_tokens) == {
        "tenant-a": "c2VjcmV0==",
        "tenant-b": "with spaces around",
    }


def test_inline_tokens(environ: dict[str, str]) -> None:
    environ["RUNTARA_AUTH_TOKENS"] = "tenant-a=token-a, tenant-b=token=b,"
    assert dict(config_from_env(environ).auth_tokens) == {
        "tenant-a": "token-a",
        "tenant-b": "token=b",
    }


def test_malformed_token_line_names_its_place_not_its_text(
    environ: dict[str, str], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("tenant-a=one\n# comment\nsecret-without-tenant\n")
    environ["RUNTARA_AUTH_TOKENS"] = f"@{tokens}"
    message = str(config_error(environ))
    assert message == f"RUNTARA_AUTH_TOKENS: line 3 of {tokens} is not tenant=token"


def test_empty_token_file_is_refused(environ: dict[str, str], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# nobody yet\n\n")
    environ["RUNTARA_AUTH_TOKENS"] = f"@{tokens}"
    assert "names no tenant=token pair" in str(config_error(environ))


@pytest.mark.parametrize(
    ("content", "reason"), [(None, "No such file or directory"), (b"a=\xff\n", "not UTF-8 text")]
)
def test_unreadable_token_file(
    environ: dict[str, str], tmp_path: Path, content: bytes | None, reason: str
) -> None:
    tokens = tmp_path / "tokens"
    if content is not None:
        tokens.write_bytes(content)
    environ["RUNTARA_AUTH_TOKENS"] = f"@{tokens}"
    assert str(config_error(environ)) == (
        f"RUNTARA_AUTH_TOKENS: cannot read token file '{tokens}': {reason}"
    )


# Database URLs


@pytest.mark.parametrize(
    ("text", "dsn", "masked"),
    [
        (
            "postgresql://user:pa%40ss@db.example:5433/runtara?sslmode=require",
            "postgresql://user:pa%40ss@db.example:5433/runtara?sslmode=require",
            "postgresql://user:***@db.example:5433/runtara?sslmode=require",
        ),
        (
            "postgres://root@127.0.0.1/postgres",
            "postgresql://root@127.0.0.1/postgres",
            "postgresql://root@127.0.0.1/postgres",
        ),
        (
            "POSTGRESQL://u@h/db?password=pw&application_name=runtara",
            "postgresql://u@h/db?password=pw&application_name=runtara",
            "postgresql://u@h/db?password=***&application_name=runtara",
        ),
    ],
)
def test_postgresql_urls(text: str, dsn: str, masked: str) -> None:
    url = parse_database_url(text)
    assert url.engine == "postgresql"
    assert url.sqlite_path is None
    assert url.postgres_dsn == dsn
    assert url.masked() == str(url) == masked
    assert repr(url) == f"DatabaseURL({masked!r})"


def test_postgresql_dsn_is_understood_by_psycopg2() -> None:
    url = parse_database_url("postgres://user:pa%40ss@db.example:5433/runtara?sslmode=require")
    assert psycopg2.extensions.parse_dsn(url.postgres_dsn) == {
        "user": "user",
        "password": "pa@ss",
        "host": "db.example",
        "port": "5433",
        "dbname": "runtara",
        "sslmode": "require",
    }


def test_absolute_sqlite_url() -> None:
    url = parse_database_url("sqlite:///var/lib/runtara/state.db")
    assert url == DatabaseURL("sqlite", sqlite_path=Path("/var/lib/runtara/state.db"))
    assert url.postgres_dsn is None
    assert str(url) == "sqlite:///var/lib/runtara/state.db"


def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = parse_database_url("sqlite:data/my%20state.db")
    assert url.sqlite_path == tmp_path / "data" / "my state.db"
    assert str(url) == f"sqlite://{tmp_path}/data/my%20state.db"
    assert parse_database_url(str(url)) == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mysql://user:s3cret@host/db", "unsupported database URL scheme 'mysql'"),
        ("/var/lib/runtara.db", "not a database URL"),
        ("sqlite://host/x.db", "names no host"),
        ("sqlite:", "must name a database file"),
        ("sqlite:///var/lib/", "must name a database file"),
        ("sqlite::memory:", "cannot be shared"),
        ("sqlite:///x.db?mode=ro", "takes no query"),
        ("postgresql:db", "must start with postgresql://"),
        ("postgresql://user:s3cret@host:port/db", "port of a postgresql: URL"),
        ("postgresql://host:0/db", "port of a postgresql: URL"),
    ],
)
def test_invalid_database_urls(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_database_url(text)
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_scheme_lists_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"postgresql://.*sqlite:///.*sqlite:relative"):
        parse_database_url("mongodb://h/db")


def test_embedded_sqlite(tmp_path: Path) -> None:
    url = embedded_sqlite(tmp_path / "state")
    assert url.engine == "sqlite"
    assert url.sqlite_path == tmp_path / "state" / "runtara.db"
