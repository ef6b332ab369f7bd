"""Sending a client to its node: WHIP and WHEP by ``307 Temporary Redirect`` (RFC 9725 section
4.5; OBS and WHEP players follow it and POST the same offer there), the page's ``/offer`` by a
proxied request (the page stays on one origin) whose answer carries the node's own ICE
candidates, so media flows straight to the node."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
from aiohttp import web

from ..problems import Problem
from .node import Placement, SingleNode

PROXY_TIMEOUT = aiohttp.ClientTimeout(total=15)
PASSED_ON = ("Authorization", "Content-Type")
CLUSTER = web.AppKey("cluster", SingleNode)


@contextlib.asynccontextmanager
async def engine_placement(
    request: web.Request, stream: str | None, how: str
) -> AsyncIterator[Placement]:
    """Where a new engine session goes (``how`` it gets there if elsewhere: redirect or proxy);
    a session opened here in the block is then counted in the cluster at once."""
    cluster = request.app[CLUSTER]
    placement = await cluster.engine_slot(stream, request.query.get("slot"), how)
    try:
        yield placement
    except BaseException:
        await cluster.settle(placement, stream, opened=False)
        raise
    await cluster.settle(placement, stream, opened=True)


def redirect(placement: Placement, path: str) -> web.HTTPTemporaryRedirect:
    """307 to the same path on the chosen node, with the token of the slot it holds."""
    return web.HTTPTemporaryRedirect(f"{placement.url}{path}?slot={quote(placement.token)}")


def stream_redirect(url: str, path: str) -> web.HTTPTemporaryRedirect:
    return web.HTTPTemporaryRedirect(f"{url}{path}")


def forwarded_headers(request: web.Request) -> dict[str, str]:
    """The client's credentials, and its address appended to X-Forwarded-For (a node trusts it
    when the front door is in its ``server.trusted_proxies``)."""
    headers = {name: request.headers[name] for name in PASSED_ON if name in request.headers}
    chain = [*request.headers.getall("X-Forwarded-For", []), request.remote or ""]
    headers["X-Forwarded-For"] = ", ".join(a for a in chain if a)
    return headers


class Proxy:
    """The front door's HTTP client to the other nodes."""

    def __init__(self):
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=PROXY_TIMEOUT)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def offer(self, request: web.Request, placement: Placement, body: dict) -> web.Response:
        url = f"{placement.url}/offer?slot={quote(placement.token)}"
        return await self._forward(request, "POST", url, json.dumps(body).encode())

    async def get(self, request: web.Request, url: str) -> web.Response:
        return await self._forward(request, "GET", url, None)

    async def _forward(
        self, request: web.Request, method: str, url: str, data: bytes | None
    ) -> web.Response:
        headers = forwarded_headers(request)
        try:
            async with self.http.request(
                method, url, data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
                kept = {
                    k: v for k, v in response.headers.items()
                    if k in ("Content-Type", "Retry-After", "WWW-Authenticate", "Cache-Control")
                }  # fmt: skip
                return web.Response(status=response.status, body=body, headers=kept)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Problem(
                503, "Node unreachable",
                f"the node chosen for this session did not answer ({type(exc).__name__}); "
                "try again", {"Retry-After": "2"},
            ) from None  # fmt: skip


PROXY = web.AppKey("proxy", Proxy)
