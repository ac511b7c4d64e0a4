"""Helpers of the HTTP API tests (imported as ``tests.web.support``): a real client."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import treq
from twisted.web.client import Agent, HTTPConnectionPool


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, str]:
        """The ``error`` of an error document, checked to have exactly its two fields."""
        document = self.json()
        assert set(document) == {"error"}, document
        assert set(document["error"]) == {"code", "message"}, document
        return document["error"]


def segment(text: str) -> str:
    """``text`` as one path segment (``/`` and all included)."""
    return quote(text, safe="")


class Api:
    """Requests to one management HTTP server over real TCP, with or without a token."""

    def __init__(self, reactor: Any, url: str, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._client = treq.client.HTTPClient(Agent(reactor, pool=self._pool))

    def with_token(self, token: str | None) -> Api:
        from twisted.internet import reactor

        return Api(reactor, self.url, token)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        answer = await self._client.request(
            method,
            self.url + path,
            data=body,
            headers={name: [value] for name, value in sent.items()},
            params=params,
            allow_redirects=False,
        )
        content = await answer.content()
        received = {
            name.decode().lower(): values[-1].decode()
            for name, values in answer.headers.getAllRawHeaders()
        }
        return Response(answer.code, received, content)

    async def get(self, path: str, **params: str) -> Response:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, document: Any = None, *, raw: bytes | None = None) -> Response:
        body = raw if raw is not None else json.dumps(document).encode()
        return await self.request(
            "POST", path, body=body, headers={"Content-Type": "application/json"}
        )
