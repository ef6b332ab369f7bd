"""Which host names the server answers to, and which web origins' pages may call it.

Host: a page on an attacker's name that resolves to this server's address (DNS rebinding) would
be same-origin with it, so requests naming another host are refused: localhost and IP addresses
are always served, other names only when ``allowed_hosts`` lists them.

CORS: WHIP and WHEP answer browsers on the origins of ``cors_origins`` only (none by default: the
server's own page needs no CORS). Everything else is same-origin.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from .http import SETTINGS
from .problems import Problem

CORS_PATHS = ("/whip", "/whep")
ENDPOINT_METHODS = "POST, OPTIONS"
RESOURCE_METHODS = "DELETE, PATCH, OPTIONS"


def host_name(host: str) -> str:
    """The name in a Host header: without its port, brackets or final dot, in lower case."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name.rstrip(".").lower()


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    name = host_name(host)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost") or "*" in allowed:
        return True
    for pattern in (p.lower().rstrip(".") for p in allowed):
        if name == pattern.lstrip(".") or (pattern.startswith(".") and name.endswith(pattern)):
            return True
    return False


@web.middleware
async def host_middleware(request: web.Request, handler) -> web.StreamResponse:
    host = request.headers.get("Host")
    if host is not None and not host_allowed(host, request.app[SETTINGS].allowed_hosts):
        raise Problem(
            421, "Misdirected Request",
            f"this server does not answer to the host name {host_name(host)[:100]!r}; its "
            "operator can add it to server.allowed_hosts",
        )  # fmt: skip
    return await handler(request)


def cors_headers(request: web.Request) -> dict[str, str]:
    """CORS headers for a WHIP or WHEP response: none unless the request's origin is allowed."""
    allowed = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    if "*" in allowed:
        allow = "*"
    elif origin and origin in allowed:
        allow = origin
    else:
        return {}
    resource = request.path.rstrip("/").count("/") >= 3  # /whip/{stream}/{session}
    return {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Allow-Methods": RESOURCE_METHODS if resource else ENDPOINT_METHODS,
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": (
            "Location, Link, ETag, Accept-Post, Accept-Patch, Retry-After"
        ),
        **({"Vary": "Origin"} if allow != "*" else {}),
    }


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every WHIP and WHEP answer, refusals included, gets them."""
    if request.path.startswith(CORS_PATHS):
        for name, value in cors_headers(request).items():
            response.headers.setdefault(name, value)
