"""The management HTTP server's resource tree (ENVIRONMENT.md section 6).

::

    /                      the dashboard (runtara.web.dashboard)
    /static/...            its script, style sheet and icon
    /login, /logout        the dashboard's session, when an admin token is set
    /healthz               GET, the only request that never needs the token
    /metrics               Prometheus text format
    /api/v1/...            the JSON API (runtara.web.api)

``Root`` is the one place every request passes first: it applies the
``Guard`` (token, origin, host) before any child is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site

from runtara.admin import Admin
from runtara.interfaces import IPersistence
from runtara.metrics import InstanceCounts, Metrics
from runtara.web._guard import Guard
from runtara.web._http import (
    NOT_FOUND,
    ApiError,
    Endpoint,
    Handler,
    Refusal,
    Reply,
    error_reply,
    write_reply,
)
from runtara.web.api import api_resource
from runtara.web.dashboard import Shell, SignIn, Static, sign_in_reply

_SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
}


class Root(Resource):
    """Applies the guard, then finds the child."""

    def __init__(self, guard: Guard, children: Mapping[bytes, IResource]) -> None:
        super().__init__()
        self._guard = guard
        self._children = dict(children)
        self._public = {b"healthz"} | ({b"login", b"logout"} if guard.required else set())

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        for header, value in _SECURITY_HEADERS.items():
            request.setHeader(header, value)
        refusal = self._guard.refusal(request)
        if refusal is not None:
            return Refusal(refusal)
        child = self._children.get(name)
        public = name in self._public and (name != b"healthz" or request.method in _READS)
        if not public and not self._guard.authenticated(request):
            return _Unauthorized()
        if child is None or (name == b"" and request.postpath):
            return NOT_FOUND
        return child

    def render(self, request: IRequest) -> int:
        return NOT_FOUND.render(request)


_READS = frozenset({b"GET", b"HEAD"})


class _Unauthorized(Resource):
    """``401``: the sign-in page for a browser asking for a page, else the JSON error."""

    isLeaf = True

    def render(self, request: IRequest) -> int:
        wants_page = request.method in _READS and "text/html" in (request.getHeader("accept") or "")
        if wants_page:
            reply = sign_in_reply()
        else:
            reply = error_reply(
                ApiError(401, "unauthorized", "this request needs Authorization: Bearer <token>")
            )
        headers = {**reply.headers, "www-authenticate": 'Bearer realm="runtara"'}
        write_reply(request, Reply(reply.body, reply.content_type, 401, headers))
        return NOT_DONE_YET


class Health(Endpoint):
    """``GET /healthz``: 200 when the database answers, else 503."""

    def __init__(self, persistence: IPersistence) -> None:
        super().__init__()
        self._persistence = persistence

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.get}

    async def get(self, request: IRequest) -> Reply:
        if await self._persistence.check_health():
            return Reply.json({"status": "ok", "database": "reachable"})
        return Reply.json({"status": "unavailable", "database": "unreachable"}, 503)


class MetricsPage(Endpoint):
    """``GET /metrics``: every metric, the instance counts no older than a few seconds."""

    def __init__(self, metrics: Metrics, counts: InstanceCounts) -> None:
        super().__init__()
        self._metrics = metrics
        self._counts = counts

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.get}

    async def get(self, request: IRequest) -> Reply:
        await self._counts.refresh()
        return Reply(self._metrics.exposition(), CONTENT_TYPE_LATEST)


class _QuietSite(Site):
    """A ``Site`` without an access log: the dashboard polls every few seconds."""

    noisy = False

    def log(self, request: IRequest) -> None:
        return None


def management_site(
    admin: Admin, metrics: Metrics, counts: InstanceCounts, token: str | None
) -> Site:
    """The whole management HTTP server over ``admin``'s database."""
    guard = Guard(token)
    children: dict[bytes, IResource] = {
        b"": Shell(),
        b"static": Static(),
        b"healthz": Health(admin.persistence),
        b"metrics": MetricsPage(metrics, counts),
        b"api": api_resource(admin),
    }
    if guard.required:
        children[b"login"] = SignIn(guard)
        children[b"logout"] = SignIn(guard, signing_out=True)
    return _QuietSite(Root(guard, children))
