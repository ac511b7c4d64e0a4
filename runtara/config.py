"""runtara-core's configuration: one frozen value built from the environment.

Every setting has an environment variable and a ``twistd runtara-core``
option (``SETTINGS``); an option overrides the variable, and an empty value
counts as not given. ``config_from_env`` validates everything before the
server touches a socket or a file, and reports the first bad value as a
``ConfigError`` whose ``str()`` is one line naming the variable (or the
option) it came from.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from runtara.database_url import DatabaseURL, embedded_sqlite, parse_database_url
from runtara.frames import HEADER_SIZE
from runtara.settings import ConfigurationError, boolean, integer

MAX_FRAME_BODY = 2**32 - 1
"""The largest body a frame header can announce (a u32, PROTOCOL.md section 2)."""

DEFAULT_DB_LOCK_TIMEOUT_MS = 5_000
"""PostgreSQL: how long a statement may wait for a lock before it fails (retryable)."""
DEFAULT_DB_STATEMENT_TIMEOUT_MS = 15_000
"""PostgreSQL: how long one statement may run before it is cancelled (retryable);
below the SDK's 30 s request timeout, so a client gets an answer it can retry."""
MAX_WORKERS = 64
"""The most worker processes ``--workers`` accepts."""

LOOPBACK_HOST = "127.0.0.1"
"""Where the server listens by default when it has no tenant tokens (PROTOCOL.md section 1)."""

ALL_INTERFACES_HOST = "0.0.0.0"
"""Where the server listens by default when tenant tokens are configured."""


class ConfigError(ConfigurationError):
    """A runtara-core setting is invalid; ``str()`` is one line naming its source."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything runtara-core needs to know to start.

    ``quic_host`` is an IP address: ``0.0.0.0`` binds every IPv4 interface,
    and ``::`` binds every IPv6 interface (and IPv4 too where the system
    allows dual-stack sockets). ``auth_tokens`` maps tenant to token; empty
    means registration needs no token. ``config_from_env`` defaults the host
    to loopback without tokens and to every interface with them, and refuses
    a non-loopback host without tokens unless ``allow_unauthenticated``.

    ``http_host``/``http_port`` is where the management HTTP server listens
    (``http_port`` None: it does not run); ``admin_token``, when set, is the
    bearer token every HTTP request but ``GET /healthz`` must carry. A
    non-loopback ``http_host`` needs an ``admin_token``.
    """

    database_url: DatabaseURL
    state_dir: Path
    quic_host: str = LOOPBACK_HOST
    quic_port: int = 8001
    max_concurrent_instances: int = 32
    max_message_bytes: int = 64 * 1024 * 1024
    max_buffered_bytes: int = 256 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_tokens: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, hash=False
    )
    db_pool_size: int = 8
    db_lock_timeout_ms: int = DEFAULT_DB_LOCK_TIMEOUT_MS
    db_statement_timeout_ms: int = DEFAULT_DB_STATEMENT_TIMEOUT_MS
    allow_unauthenticated: bool = False
    http_host: str = "127.0.0.1"
    http_port: int | None = 8002
    admin_token: str | None = field(default=None, repr=False)
    log_format: str = "text"
    workers: int = 1
    """Reactor processes serving the QUIC port together (``SO_REUSEPORT``)."""

    @property
    def unauthenticated_exposure(self) -> bool:
        """Whether anyone off this machine may register instances: a host that is
        not loopback and no tenant tokens (only with ``allow_unauthenticated``)."""
        return not self.auth_tokens and not is_loopback(self.quic_host)

    @property
    def embedded_database(self) -> bool:
        """Whether the database is the embedded SQLite file ``<state_dir>/runtara.db``."""
        return self.database_url == embedded_sqlite(self.state_dir)


@dataclass(frozen=True)
class Setting:
    """One setting: its ``Config`` field, variable, option, and how ``--help`` describes it."""

    field: str
    variable: str
    option: str
    default: str
    help: str
    parse: Callable[[str], Any] = field(repr=False, compare=False)
    """Turns the text of the variable or option into the value; ValueError when invalid."""
    flag: bool = False
    """A switch: ``--option`` takes no value, the variable is ``true`` or ``false``."""


def config_from_env(environ: Mapping[str, str], **overrides: object) -> Config:
    """Build and validate the configuration from ``environ``.

    ``overrides`` are keyed by ``Config`` field name and win over the
    environment. None and ``""`` mean "not given". A string is parsed like
    the variable (``quic_port="0"``, what ``twistd`` options give); a
    ``DatabaseURL``, or a tenant-to-token mapping for ``auth_tokens`` (empty
    for no authentication), is taken as it is; any other value is parsed from
    its ``str()`` (``quic_port=0``, ``state_dir=Path(...)``). A bad override
    is reported under its option name (``--port``). Raises ``ConfigError`` for
    the first invalid value.
    """
    _check_override_names(overrides)
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for setting in SETTINGS:
        source = _source(setting, environ, overrides)
        if source is not None:
            name, value = source
            given_as[setting.field] = name
            values[setting.field] = _parse(setting, name, value)
    _check_tls_pair(given_as)
    _settle_buffered_bytes(values, given_as)
    _check_http_exposure(values, given_as)
    _check_workers(values, given_as)
    values.setdefault("state_dir", default_state_dir(environ))
    values.setdefault("database_url", embedded_sqlite(values["state_dir"]))
    values.setdefault(
        "quic_host", ALL_INTERFACES_HOST if values.get("auth_tokens") else LOOPBACK_HOST
    )
    config = Config(**values)
    _check_exposure(config, given_as)
    return config


def is_loopback(host: str) -> bool:
    """Whether the IP address ``host`` is only reachable from this machine."""
    return ipaddress.ip_address(host).is_loopback


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/runtara``, or ``~/.local/state/runtara`` without it.

    Independent of the current directory, so the server and the ``runtara``
    command find the same embedded database wherever they are started.
    """
    xdg_state_home = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg_state_home):
        return Path(xdg_state_home) / "runtara"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "runtara"


class UnusableStateDirectory(Exception):
    """The state directory cannot be created, or is not a directory."""


def make_state_dir(path: Path) -> None:
    """Create the state directory (mode 0700) unless it exists; ``UnusableStateDirectory``
    (one line naming the path and why) when it cannot be."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        if isinstance(error, FileExistsError | NotADirectoryError):
            reason = "it is not a directory"
        else:
            reason = error.strerror or str(error)
        raise UnusableStateDirectory(
            f"cannot use {path} as the state directory (RUNTARA_STATE_DIR, --state-dir): {reason}"
        ) from None


def _check_override_names(overrides: Mapping[str, object]) -> None:
    known = {setting.field for setting in SETTINGS}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown configuration fields: {', '.join(unknown)}")


def _source(
    setting: Setting, environ: Mapping[str, str], overrides: Mapping[str, object]
) -> tuple[str, object] | None:
    """``(name, value)``: the option or variable that gives ``setting``, or None."""
    override = overrides.get(setting.field)
    if override is not None and override != "":
        return f"--{setting.option}", override
    text = environ.get(setting.variable)
    if text:
        return setting.variable, text
    return None


def _parse(setting: Setting, name: str, value: object) -> Any:
    """``value`` checked for ``setting``; a ``ConfigError`` naming ``name`` when invalid."""
    try:
        if isinstance(value, DatabaseURL) and setting.field == "database_url":
            return value
        if isinstance(value, Mapping) and setting.field == "auth_tokens":
            return _checked_tokens(value)
        return setting.parse(str(value))
    except ValueError as error:
        raise ConfigError(name, str(error)) from None


def _check_tls_pair(given_as: Mapping[str, str]) -> None:
    """Refuse a certificate without its key, or a key without its certificate."""
    cert, key = _SETTING["tls_cert"], _SETTING["tls_key"]
    for given, missing in ((cert, key), (key, cert)):
        name = given_as.get(given.field)
        if name and missing.field not in given_as:
            missing_name = f"--{missing.option}" if name.startswith("--") else missing.variable
            raise ConfigError(name, f"needs {missing_name} too (give both or neither)")


def _check_http_exposure(values: Mapping[str, Any], given_as: Mapping[str, str]) -> None:
    """Refuse to serve the management API beyond this host without a token."""
    host = values.get("http_host", Config.http_host)
    if values.get("http_port", Config.http_port) is None or values.get("admin_token"):
        return
    if is_loopback(host):
        return
    token = _SETTING["admin_token"]
    token_name = f"--{token.option}" if given_as["http_host"].startswith("--") else token.variable
    raise ConfigError(
        given_as["http_host"],
        f"{host} is not a loopback address: the management HTTP server needs {token_name}"
        " to listen there",
    )


def _settle_buffered_bytes(values: dict[str, Any], given_as: Mapping[str, str]) -> None:
    """The server-wide request budget takes at least one request of the largest size:
    by default it grows to that; a smaller budget given explicitly is refused."""
    defaults = Config.__dataclass_fields__
    message = values.get("max_message_bytes", defaults["max_message_bytes"].default)
    largest = message + HEADER_SIZE
    if "max_buffered_bytes" not in values:
        values["max_buffered_bytes"] = max(defaults["max_buffered_bytes"].default, largest)
    elif values["max_buffered_bytes"] < largest:
        raise ConfigError(
            given_as["max_buffered_bytes"],
            f"must be at least one request of the largest size ({message} body bytes"
            f" from {_SETTING['max_message_bytes'].variable} + {HEADER_SIZE} header bytes),"
            f" got {values['max_buffered_bytes']}",
        )


def _check_workers(values: Mapping[str, Any], given_as: Mapping[str, str]) -> None:
    """Refuse several workers where one UDP port cannot be shared (anywhere but Linux)."""
    if values.get("workers", 1) == 1:
        return
    from runtara.quic.port import reuse_port_supported

    if not reuse_port_supported():
        raise ConfigError(
            given_as["workers"], "more than one worker needs Linux (SO_REUSEPORT load balancing)"
        )


def _check_exposure(config: Config, given_as: Mapping[str, str]) -> None:
    """Refuse to serve other machines without tenant tokens, unless told to."""
    if config.unauthenticated_exposure and not config.allow_unauthenticated:
        raise ConfigError(given_as["quic_host"], exposure_refusal(config.quic_host))


def exposure_refusal(host: str) -> str:
    """Why ``host`` is refused without tenant tokens, and the three ways out."""
    tokens, allow = _SETTING["auth_tokens"], _SETTING["allow_unauthenticated"]
    return (
        f"{host} is not a loopback address and no tenant tokens are configured"
        f" ({tokens.variable}); configure tokens, listen on {LOOPBACK_HOST}, or pass"
        f" --{allow.option} ({allow.variable}=true) to serve without authentication"
    )


def _parse_host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"must be an IP address such as 0.0.0.0 or ::, got {text!r}") from None


def _parse_http_port(text: str) -> int | None:
    if text.strip().lower() == "off":
        return None
    try:
        return integer(0, 65535)(text)
    except ValueError:
        raise ValueError(f"must be a port from 0 to 65535 or off, got {text!r}") from None


def _parse_admin_token(text: str) -> str:
    if not all("!" <= character <= "~" for character in text):
        raise ValueError("must be printable ASCII without spaces")
    return text


def _parse_log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"must be text or json, got {text!r}")
    return value


def _absolute_path(text: str) -> Path:
    return Path(os.path.abspath(Path(text).expanduser()))


def _parse_readable_file(text: str) -> Path:
    path = _absolute_path(text)
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise ValueError(f"cannot read {str(path)!r}: {error.strerror}") from None
    return path


def _parse_auth_tokens(text: str) -> Mapping[str, str]:
    """``tenant=token,tenant2=token2``, or ``@path`` to a file of such lines."""
    if text.startswith("@"):
        path = _absolute_path(text[1:])
        try:
            content = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise ValueError(f"cannot read token file {str(path)!r}: {reason}") from None
        entries = [
            (f"line {number} of {path}", line)
            for number, line in enumerate(content.splitlines(), start=1)
            if not line.strip().startswith("#")
        ]
    else:
        entries = [(f"entry {number}", item) for number, item in enumerate(text.split(","), 1)]
    tokens = _parse_token_entries(entries)
    if not tokens:
        raise ValueError("names no tenant=token pair (leave it unset to disable authentication)")
    return MappingProxyType(tokens)


def _checked_tokens(tokens: Mapping[object, object]) -> Mapping[str, str]:
    """A tenant-to-token mapping given as a value: non-empty strings only."""
    checked: dict[str, str] = {}
    for tenant, token in tokens.items():
        if not (isinstance(tenant, str) and tenant and isinstance(token, str) and token):
            raise ValueError("tenants and tokens must be non-empty strings")
        checked[tenant] = token
    return MappingProxyType(checked)


def _parse_token_entries(entries: list[tuple[str, str]]) -> dict[str, str]:
    """Tenant to token, from ``(where, "tenant=token")`` pairs; blank entries are skipped.

    Messages name where a bad entry is, never its text, which may hold a token.
    """
    tokens: dict[str, str] = {}
    for where, entry in entries:
        if not entry.strip():
            continue
        tenant, equals, token = (part.strip() for part in entry.partition("="))
        if not (equals and tenant and token):
            raise ValueError(f"{where} is not tenant=token")
        if tenant in tokens:
            raise ValueError(f"{where}: tenant {tenant!r} already has a token")
        tokens[tenant] = token
    return tokens


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        "RUNTARA_DATABASE_URL",
        "database",
        "embedded SQLite <state-dir>/runtara.db",
        "database URL: postgresql://user[:pass]@host[:port]/db, sqlite:///abs/path.db"
        " or sqlite:rel/path.db",
        parse_database_url,
    ),
    Setting(
        "quic_host",
        "RUNTARA_QUIC_HOST",
        "host",
        f"{LOOPBACK_HOST} without tenant tokens, {ALL_INTERFACES_HOST} with them",
        "IP address to listen on, :: for IPv6; an address other machines can reach"
        " needs tenant tokens or --allow-unauthenticated",
        _parse_host,
    ),
    Setting(
        "quic_port",
        "RUNTARA_QUIC_PORT",
        "port",
        "8001",
        "UDP port for QUIC, 0 for any",
        integer(0, 65535),
    ),
    Setting(
        "max_concurrent_instances",
        "RUNTARA_MAX_CONCURRENT_INSTANCES",
        "max-concurrent-instances",
        "32",
        "instances registered and running at once",
        integer(1),
    ),
    Setting(
        "max_message_bytes",
        "RUNTARA_MAX_MESSAGE_BYTES",
        "max-message-bytes",
        "67108864",
        "largest request body in bytes",
        integer(1, MAX_FRAME_BODY),
    ),
    Setting(
        "max_buffered_bytes",
        "RUNTARA_MAX_BUFFERED_BYTES",
        "max-buffered-bytes",
        "268435456, or the largest request if that is more",
        "request bytes this server process may hold at once for requests larger than"
        " 64 KiB, all connections together; at least the largest request",
        integer(1),
    ),
    Setting(
        "state_dir",
        "RUNTARA_STATE_DIR",
        "state-dir",
        "$XDG_STATE_HOME/runtara or ~/.local/state/runtara",
        "directory for the embedded database, the generated certificate and the"
        " stateless reset key",
        _absolute_path,
    ),
    Setting(
        "tls_cert",
        "RUNTARA_TLS_CERT",
        "tls-cert",
        "a self-signed certificate kept in the state directory",
        "PEM certificate file, together with --tls-key",
        _parse_readable_file,
    ),
    Setting(
        "tls_key",
        "RUNTARA_TLS_KEY",
        "tls-key",
        "none",
        "PEM private key file",
        _parse_readable_file,
    ),
    Setting(
        "auth_tokens",
        "RUNTARA_AUTH_TOKENS",
        "auth-tokens",
        "no authentication",
        "tenant tokens: tenant=token,tenant2=token2 or @file with one tenant=token per line",
        _parse_auth_tokens,
    ),
    Setting(
        "db_pool_size",
        "RUNTARA_DB_POOL_SIZE",
        "db-pool-size",
        "8",
        "database connections in the pool",
        integer(1),
    ),
    Setting(
        "db_lock_timeout_ms",
        "RUNTARA_DB_LOCK_TIMEOUT_MS",
        "db-lock-timeout-ms",
        str(DEFAULT_DB_LOCK_TIMEOUT_MS),
        "PostgreSQL: milliseconds a statement may wait for a lock, 0 for no limit",
        integer(0),
    ),
    Setting(
        "db_statement_timeout_ms",
        "RUNTARA_DB_STATEMENT_TIMEOUT_MS",
        "db-statement-timeout-ms",
        str(DEFAULT_DB_STATEMENT_TIMEOUT_MS),
        "PostgreSQL: milliseconds one statement may run, 0 for no limit",
        integer(0),
    ),
    Setting(
        "allow_unauthenticated",
        "RUNTARA_ALLOW_UNAUTHENTICATED",
        "allow-unauthenticated",
        "false",
        "listen on a non-loopback host without tenant tokens (a warning is logged at every start)",
        boolean,
        flag=True,
    ),
    Setting(
        "workers",
        "RUNTARA_WORKERS",
        "workers",
        "1",
        "reactor processes serving the QUIC port together (Linux, SO_REUSEPORT)",
        integer(1, MAX_WORKERS),
    ),
    Setting(
        "http_host",
        "RUNTARA_HTTP_HOST",
        "http-host",
        "127.0.0.1",
        "IP address of the management HTTP server (API, dashboard, metrics);"
        " beyond loopback it needs --admin-token",
        _parse_host,
    ),
    Setting(
        "http_port",
        "RUNTARA_HTTP_PORT",
        "http-port",
        "8002",
        "TCP port of the management HTTP server, 0 for any, off for none",
        _parse_http_port,
    ),
    Setting(
        "admin_token",
        "RUNTARA_ADMIN_TOKEN",
        "admin-token",
        "none: no token asked (loopback only)",
        "bearer token every HTTP request but GET /healthz must carry",
        _parse_admin_token,
    ),
    Setting(
        "log_format",
        "RUNTARA_LOG_FORMAT",
        "log-format",
        "text",
        "text, or json for one JSON object per line on standard output (needs -n)",
        _parse_log_format,
    ),
)
"""Every setting, in the order ``--help`` lists them."""

_SETTING = {setting.field: setting for setting in SETTINGS}
