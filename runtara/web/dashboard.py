"""The dashboard (ENVIRONMENT.md section 7): one page, one script, one style sheet.

``GET /`` is a small HTML shell (``twisted.web.template``, which escapes
what it renders); ``/static/dashboard.js`` draws every view from the JSON
API and refreshes it by polling, without a build step, and writes text only
through ``textContent``, so nothing an instance holds is ever read as HTML.
The assets ship in the wheel as package data (no CDN: it works offline).
The Content-Security-Policy allows scripts and styles from this server
only, so even a mistake could not run an injected inline script.

With an admin token, a browser that has no session gets the sign-in page
(``401``); signing in with the token sets an HTTP-only, same-site session
cookie derived from the token.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from importlib import resources
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import Tag, flattenString, tags

from runtara import __version__
from runtara.web._guard import SESSION_COOKIE, Guard
from runtara.web._http import (
    NOT_FOUND,
    Endpoint,
    Handler,
    Reply,
    write_reply,
)
from runtara.web._params import MAX_BODY_BYTES

HTML = "text/html; charset=utf-8"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The files of ``static/`` that are served, with their content types."""

_SIGN_IN_STYLE = (
    "body{font:15px system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}"
    "form{max-width:22rem;margin:5rem auto;background:#fff;padding:1.5rem 2rem;"
    "border-radius:8px;box-shadow:0 1px 4px #0002}"
    "input{width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0 1rem;font:inherit}"
    "button{padding:.5rem 1.2rem;font:inherit;background:#2456c7;color:#fff;border:0;"
    "border-radius:4px}.error{color:#b3261e}"
)
_SIGN_IN_POLICY = (
    "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none';"
    " style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(_SIGN_IN_STYLE.encode()).digest()).decode()
    + "'"
)


def _page(title: str, head: list[Tag], body: list[Tag]) -> bytes:
    document = tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title(title),
            *head,
        ),
        tags.body(*body),
    )
    rendered: list[bytes] = []
    flattenString(None, document).addCallback(rendered.append)
    return b"<!DOCTYPE html>\n" + rendered[0]


def shell() -> bytes:
    """The page every view of the dashboard is drawn in."""
    return _page(
        "runtara",
        [
            tags.link(rel="icon", href="/static/favicon.svg", type="image/svg+xml"),
            tags.link(rel="stylesheet", href="/static/dashboard.css"),
            tags.script(src="/static/dashboard.js", defer="defer"),
        ],
        [
            tags.header(
                tags.a("runtara", href="#/", class_="brand"),
                tags.nav(tags.a("Instances", href="#/", id="nav-instances")),
                tags.span(f"v{__version__}", class_="version"),
            ),
            Tag("main", attributes={"id": "view"})(
                tags.noscript("The dashboard needs JavaScript.")
            ),
        ],
    )


def sign_in_page(message: str | None) -> bytes:
    """The form that asks for the admin token (``message``: why it is shown again)."""
    form = tags.form(method="post", action="/login")(
        tags.h1("runtara"),
        tags.p("This server asks for its admin token (RUNTARA_ADMIN_TOKEN)."),
        tags.p(message, class_="error", role="alert") if message else "",
        tags.label("Admin token", for_="token"),
        tags.input(type="password", name="token", id="token", autofocus="autofocus"),
        tags.button("Sign in", type="submit"),
    )
    return _page("runtara: sign in", [tags.style(_SIGN_IN_STYLE)], [form])


def html_reply(body: bytes, status: int = 200, policy: str = CONTENT_SECURITY_POLICY) -> Reply:
    return Reply(body, HTML, status, {"content-security-policy": policy})


def sign_in_reply(message: str | None = None) -> Reply:
    return html_reply(sign_in_page(message), 401, _SIGN_IN_POLICY)


class Shell(Endpoint):
    """``GET /``."""

    def __init__(self) -> None:
        super().__init__()
        self._page = shell()

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"GET": self.get}

    async def get(self, request: IRequest) -> Reply:
        return html_reply(self._page)


class Static(Resource):
    """``/static/<name>``: the files named in ``STATIC_TYPES``, from the package."""

    def __init__(self) -> None:
        super().__init__()
        folder = resources.files(__package__).joinpath("static")
        self._files = {
            name.encode(): Reply(folder.joinpath(name).read_bytes(), content_type)
            for name, content_type in STATIC_TYPES.items()
        }

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        reply = self._files.get(path)
        if reply is None or request.postpath:
            return NOT_FOUND
        return _Asset(reply)

    def render(self, request: IRequest) -> int:
        return NOT_FOUND.render(request)


class _Asset(Resource):
    isLeaf = True

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self._reply = reply

    def render_GET(self, request: IRequest) -> int:
        write_reply(request, self._reply)
        return NOT_DONE_YET


class SignIn(Endpoint):
    """``POST /login`` (form field ``token``) sets the session; ``POST /logout`` clears it."""

    def __init__(self, guard: Guard, signing_out: bool = False) -> None:
        super().__init__()
        self._guard = guard
        self._signing_out = signing_out

    def handlers(self) -> Mapping[bytes, Handler]:
        return {b"POST": self.sign_out if self._signing_out else self.sign_in}

    async def sign_in(self, request: IRequest) -> Reply:
        content = request.content
        form = parse_qs((b"" if content is None else content.read(MAX_BODY_BYTES)).decode())
        given = form.get("token", [""])[-1]
        if not self._guard.token_matches(given):
            return sign_in_reply("That is not the admin token.")
        return self._go_home(self._guard.session_cookie(), "")

    async def sign_out(self, request: IRequest) -> Reply:
        return self._go_home(b"", "; Max-Age=0")

    def _go_home(self, value: bytes, expiry: str) -> Reply:
        cookie = f"{SESSION_COOKIE.decode()}={value.decode()}; Path=/; HttpOnly; SameSite=Strict"
        return Reply(b"", HTML, 303, {"location": "/", "set-cookie": cookie + expiry})
