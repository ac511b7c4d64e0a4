"""Database URLs: which engine runtara stores its state in, and where.

Accepted forms (see ``shared/CLI.md``):

- ``postgresql://user[:password]@host[:port]/database[?param=value...]``,
  also spelled ``postgres://``; query parameters are handed to libpq as they
  are;
- ``sqlite:///absolute/path.db``;
- ``sqlite:relative/path.db``, relative to the current directory and made
  absolute when parsed.

Percent escapes (``%20``) are decoded in SQLite paths. A ``DatabaseURL``
never shows a password: ``str()``, ``repr()`` and ``masked()`` all print
``***`` in its place; only ``postgres_dsn`` carries the real one, for the
driver.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

Engine = Literal["sqlite", "postgresql"]

EMBEDDED_DATABASE_NAME = "runtara.db"
"""File name of the embedded SQLite database inside the state directory."""

ACCEPTED_FORMS = (
    "postgresql://user[:password]@host[:port]/database, "
    "sqlite:///absolute/path.db or sqlite:relative/path.db"
)

_MASK = "***"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_PASSWORD_PARAMETER = "password"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL.

    ``engine`` is also the migration dialect (``runtara/sql/<engine>/``).
    Exactly one of ``sqlite_path`` (absolute) and ``postgres_dsn`` (a
    ``postgresql://`` URL that psycopg2 and libpq accept) is set.
    """

    engine: Engine
    sqlite_path: Path | None = None
    postgres_dsn: str | None = None

    def masked(self) -> str:
        """The URL with any password replaced by ``***``, safe to print or log."""
        if self.sqlite_path is not None:
            return "sqlite://" + quote(str(self.sqlite_path))
        assert self.postgres_dsn is not None
        return _mask_postgres_dsn(self.postgres_dsn)

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"DatabaseURL({self.masked()!r})"


def parse_database_url(text: str) -> DatabaseURL:
    """Parse one of the accepted URL forms (see the module docstring).

    Raises ``ValueError`` with a one-line message, which never contains the
    password, when ``text`` is not an accepted URL.
    """
    match = _SCHEME.match(text)
    if match is None:
        raise ValueError(f"not a database URL (expected {ACCEPTED_FORMS})")
    scheme = match.group(1).lower()
    rest = text[match.end() :]
    if scheme == "sqlite":
        return DatabaseURL("sqlite", sqlite_path=_parse_sqlite_path(rest))
    if scheme in _POSTGRES_SCHEMES:
        return DatabaseURL("postgresql", postgres_dsn=_parse_postgres_dsn(rest))
    raise ValueError(f"unsupported database URL scheme {scheme!r} (expected {ACCEPTED_FORMS})")


def embedded_sqlite(state_dir: Path) -> DatabaseURL:
    """The embedded database: ``<state_dir>/runtara.db``."""
    return DatabaseURL("sqlite", sqlite_path=_absolute(state_dir / EMBEDDED_DATABASE_NAME))


def _parse_sqlite_path(rest: str) -> Path:
    """The absolute path named by the part of a ``sqlite:`` URL after the colon."""
    if "?" in rest or "#" in rest:
        raise ValueError("a sqlite: URL takes no query or fragment")
    if rest.startswith("//") and not rest.startswith("///"):
        raise ValueError(
            "a sqlite: URL names no host: use sqlite:///absolute/path.db or sqlite:relative/path.db"
        )
    path = unquote(rest[2:] if rest.startswith("///") else rest)
    if not path or path.endswith("/"):
        raise ValueError("a sqlite: URL must name a database file")
    if path == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared: name a file")
    return _absolute(Path(path))


def _parse_postgres_dsn(rest: str) -> str:
    """A ``postgresql://`` DSN from the part of a PostgreSQL URL after the scheme."""
    if not rest.startswith("//"):
        raise ValueError("a postgresql: URL must start with postgresql://")
    dsn = "postgresql:" + rest
    parts = urlsplit(dsn)
    if parts.fragment:
        raise ValueError("a postgresql: URL takes no fragment")
    try:
        valid_port = parts.port != 0
    except ValueError:
        valid_port = False
    if not valid_port:
        raise ValueError("the port of a postgresql: URL must be an integer from 1 to 65535")
    return dsn


def _mask_postgres_dsn(dsn: str) -> str:
    """``dsn`` with the password of its user info and of its query replaced."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{_MASK}@{hostport}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == _PASSWORD_PARAMETER for key, _ in pairs):
        query = urlencode(
            [(key, _MASK if key == _PASSWORD_PARAMETER else value) for key, value in pairs],
            safe="*/",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _absolute(path: Path) -> Path:
    """``path`` made absolute against the current directory and normalised."""
    return Path(os.path.abspath(path))
