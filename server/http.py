"""Small request helpers shared by the protocol handlers."""

from __future__ import annotations

import hmac

from aiohttp import web

from .problems import Problem
from .runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)


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


def check_bearer(request: web.Request, token: str | None) -> None:
    if not token:
        return
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
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
