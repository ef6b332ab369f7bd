"""Small request helpers shared by the protocol handlers."""

from __future__ import annotations

import asyncio
import ipaddress

from aiohttp import web

from streamvsr.config import ServerSettings

from .access import Action, Address, Denied, Policy, credentials_of
from .problems import Problem
from .runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("server_settings", ServerSettings)
ACCESS = web.AppKey("access", Policy)


def runtime_of(request: web.Request) -> Runtime:
    """The runtime, or 503 while the engine is still loading (never wait for it in a request)."""
    rt = request.app.get(RUNTIME)
    if rt is None:
        raise Problem(
            503, "Not ready", "the engine is still loading; try again shortly",
            {"Retry-After": "5"},
        )  # fmt: skip
    return rt


def require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise Problem(
            415, "Unsupported Media Type",
            f"Content-Type must be {expected}, got {request.content_type or 'none'}",
        )  # fmt: skip


async def read_text(request: web.Request) -> str:
    """The body decoded by its charset (UTF-8 by default)."""
    body = await read_body(request)
    charset = request.charset or "utf-8"
    try:
        return body.decode(charset)
    except LookupError:  # not a codec, or not a text one (rot13, hex)
        raise Problem(415, "Unsupported Media Type", f"unknown charset {charset[:40]!r}") from None
    except UnicodeDecodeError as exc:
        raise Problem(
            400, "Undecodable body", f"the body is not valid {charset[:40]} text (byte {exc.start})"
        ) from None


async def read_body(request: web.Request) -> bytes:
    """The body, read within ``request_timeout_s``: a client that trickles it holds no handler."""
    timeout = request.app[SETTINGS].request_timeout_s
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise Problem(
            408, "Request Timeout", f"the body did not arrive within {timeout:g} s",
            {"Connection": "close"},
        ) from None  # fmt: skip
    except web.RequestPayloadError:  # a Content-Encoding that does not decode, a cut-off body
        raise Problem(
            400, "Bad request body", "the body does not decode as its Content-Encoding says, or "
            "it was cut off",
        ) from None  # fmt: skip


def client_address(request: web.Request) -> Address | None:
    """The client's address: the peer's, or behind a trusted proxy the last address in
    X-Forwarded-For that is not a trusted proxy (earlier entries are the client's to forge)."""
    proxies = request.app[SETTINGS].trusted_proxies
    chain = [request.remote or ""]
    if proxies:
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        chain = [a.strip() for a in forwarded.split(",") if a.strip()] + chain
    address = None
    for text in reversed(chain):
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return None
        if not any(address in proxy for proxy in proxies):
            return address
    return address


def authorize(request: web.Request, action: Action, stream: str | None = None) -> None:
    """Refuse (401 or 403) unless a user grants ``action`` to this request."""
    credentials = credentials_of(request.headers.get("Authorization"))
    try:
        request.app[ACCESS].check(action, stream, credentials, client_address(request))
    except Denied as denied:
        headers = {"WWW-Authenticate": 'Bearer realm="streamvsr"'} if denied.status == 401 else {}
        title = "Unauthorized" if denied.status == 401 else "Forbidden"
        raise Problem(denied.status, title, denied.detail, headers) from None


def allowed(request: web.Request, action: Action, stream: str | None = None) -> bool:
    credentials = credentials_of(request.headers.get("Authorization"))
    return request.app[ACCESS].allows(action, stream, credentials, client_address(request))
