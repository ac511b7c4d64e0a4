"""Who may use the management HTTP server, and from where.

- With an admin token, every request but ``GET /healthz`` needs
  ``Authorization: Bearer <token>``, or the dashboard's session cookie that
  signing in with the token sets (browsers cannot add a header to a page
  they navigate to). Without it: ``401``, as a sign-in page for a browser
  asking for HTML, as the JSON error otherwise.
- A state-changing request (anything but GET and HEAD) sent by a page of
  another origin is refused (``403``): a web page cannot make a browser
  signal or start instances here (cross-site request forgery).
- Without a token (the server then listens on loopback only), a request
  whose ``Host`` is not a loopback name or an IP address is refused
  (``403``): a web page cannot reach the server by renaming itself to a
  loopback address (DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from runtara.web._http import ApiError

SESSION_COOKIE = b"runtara_session"
_SESSION_KEY_CONTEXT = b"runtara dashboard session 1"
_SAFE_METHODS = frozenset({b"GET", b"HEAD"})


class Guard:
    """The checks of the module docstring for ``token`` (None: no token asked)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._session = (
            None
            if token is None
            else hmac.new(token.encode(), _SESSION_KEY_CONTEXT, hashlib.sha256).hexdigest().encode()
        )

    @property
    def required(self) -> bool:
        return self.token is not None

    def refusal(self, request: IRequest) -> ApiError | None:
        """Why ``request`` is refused whoever sends it (origin, host), or None."""
        if self.token is None and not _local_host(request.getHeader("host")):
            return ApiError(
                403,
                "forbidden_host",
                "without RUNTARA_ADMIN_TOKEN only requests to a loopback name or an IP"
                " address are served",
            )
        if request.method not in _SAFE_METHODS and _cross_origin(request):
            return ApiError(
                403, "cross_origin", "state-changing requests from other origins are refused"
            )
        return None

    def authenticated(self, request: IRequest) -> bool:
        """Whether ``request`` carries the token (or the session cookie)."""
        if self.token is None:
            return True
        return self.token_matches(_bearer(request)) or self._session_matches(
            request.getCookie(SESSION_COOKIE)
        )

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def session_cookie(self) -> bytes:
        """The value of the session cookie that signing in sets."""
        assert self._session is not None
        return self._session

    def _session_matches(self, given: bytes | None) -> bool:
        if self._session is None or given is None:
            return False
        return hmac.compare_digest(given, self._session)


def _bearer(request: IRequest) -> str | None:
    header = request.getHeader("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


def _cross_origin(request: IRequest) -> bool:
    """Whether a browser says a page of another origin sent ``request``.

    Browsers name the sender in ``Sec-Fetch-Site`` (and older ones in
    ``Origin``); other clients send neither and are not refused here.
    """
    site = request.getHeader("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.getHeader("origin")
    if origin is None:
        return False
    host = request.getHeader("host") or ""
    return origin == "null" or urlsplit(origin).netloc.lower() != host.lower()


def _local_host(host: str | None) -> bool:
    """A ``Host`` header naming loopback or an IP address (not a DNS name)."""
    if host is None:
        return True
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
