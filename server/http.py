"""Small request helpers shared by the protocol handlers."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from streamvsr.config import ServerSettings

from .problems import Problem
from .runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("server_settings", ServerSettings)


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


def check_bearer(request: web.Request, token: str | None) -> None:
    if not token:
        return
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str (surrogates: undecodable bytes).
    given_token = value.strip().encode("utf-8", "surrogatepass")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_token, token.encode()):
        raise Problem(
            401, "Unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
            {"WWW-Authenticate": 'Bearer realm="streamvsr"'},
        )  # fmt: skip


def cors_headers(origin: str, methods: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": (
            "Location, Link, ETag, Accept-Post, Accept-Patch, Retry-After"
        ),
    }
