"""WHIP ingest (RFC 9725, e.g. from OBS) and WHEP playback (draft-ietf-wish-whep) endpoints.

Both follow one shape: ``POST`` an SDP offer to the endpoint -> ``201 Created`` with ``Location``
(the session resource) and the SDP answer; ``DELETE`` on the resource ends the session. There is
no server-side trickle ICE in aiortc (every candidate is in the answer), so ``PATCH`` is 405.
"""

from __future__ import annotations

from typing import NoReturn

from aiohttp import web

from streamvsr.config import ServerSettings

from .http import RUNTIME, check_bearer, cors_headers, require_content_type, runtime_of
from .ice import link_headers
from .peers import open_whep, open_whip
from .problems import Problem
from .sessions import PeerSession, WhepSession, WhipSession

SDP = "application/sdp"
DEFAULT_STREAM = "live"
SETTINGS = web.AppKey("server_settings", ServerSettings)
ResourceType = type[WhipSession] | type[WhepSession]  # what a session URL names


def _settings(request: web.Request) -> ServerSettings:
    return request.app[SETTINGS]


def _created(request: web.Request, location: str, session: PeerSession, answer: str):
    settings = _settings(request)
    headers = {
        "Location": location,
        "ETag": f'"{session.id}"',
        **cors_headers(settings.cors_origin, "POST, OPTIONS"),
    }
    response = web.Response(status=201, text=answer, content_type=SDP, headers=headers)
    for link in link_headers(settings.ice_servers):
        response.headers.add("Link", link)
    return response


async def post_whip(request: web.Request) -> web.Response:
    check_bearer(request, _settings(request).whip_token)
    require_content_type(request, SDP)
    rt = runtime_of(request)
    stream = request.match_info.get("stream", DEFAULT_STREAM)
    session, answer = await open_whip(rt, stream, await request.text())
    return _created(request, f"/whip/{stream}/{session.id}", session, answer)


async def post_whep(request: web.Request) -> web.Response:
    require_content_type(request, SDP)
    rt = runtime_of(request)
    stream = request.match_info["stream"]
    session, answer = await open_whep(rt, stream, await request.text())
    return _created(request, f"/whep/{stream}/{session.id}", session, answer)


def _resource(request: web.Request, session_type: ResourceType):
    """The session that the URL names: an open one of that type, on that stream."""
    rt = request.app.get(RUNTIME)
    session = rt.registry.get(request.match_info["session"]) if rt else None
    if not isinstance(session, session_type) or session.stream != request.match_info["stream"]:
        raise Problem(
            404, "No such session", f"{request.path} is not an open {session_type.kind} session"
        )
    return rt, session


async def delete_whip(request: web.Request) -> web.Response:
    check_bearer(request, _settings(request).whip_token)
    return await _delete(request, WhipSession)


async def delete_whep(request: web.Request) -> web.Response:
    return await _delete(request, WhepSession)


async def _delete(request: web.Request, session_type: ResourceType) -> web.Response:
    rt, session = _resource(request, session_type)
    await rt.registry.close(session, "DELETE by the client")
    headers = cors_headers(_settings(request).cors_origin, "DELETE, PATCH, OPTIONS")
    return web.Response(status=200, headers=headers)


async def patch_whip(request: web.Request) -> web.Response:
    check_bearer(request, _settings(request).whip_token)
    _refuse_patch(request, WhipSession)


async def patch_whep(request: web.Request) -> web.Response:
    _refuse_patch(request, WhepSession)


def _refuse_patch(request: web.Request, session_type: ResourceType) -> NoReturn:
    _resource(request, session_type)
    raise Problem(
        405, "Method Not Allowed",
        "trickle ICE and ICE restarts are not supported: all candidates are in the answer",
        {"Allow": "DELETE, OPTIONS"},
    )  # fmt: skip


async def options_endpoint(request: web.Request) -> web.Response:
    headers = cors_headers(_settings(request).cors_origin, "POST, OPTIONS")
    headers["Accept-Post"] = SDP
    response = web.Response(status=204, headers=headers)
    for link in link_headers(_settings(request).ice_servers):
        response.headers.add("Link", link)
    return response


async def options_resource(request: web.Request) -> web.Response:
    headers = cors_headers(_settings(request).cors_origin, "DELETE, PATCH, OPTIONS")
    return web.Response(status=204, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/whip", post_whip)
    app.router.add_route("OPTIONS", "/whip", options_endpoint)
    for prefix, post, delete, patch in (
        ("/whip", post_whip, delete_whip, patch_whip),
        ("/whep", post_whep, delete_whep, patch_whep),
    ):
        app.router.add_post(f"{prefix}/{{stream}}", post)
        app.router.add_route("OPTIONS", f"{prefix}/{{stream}}", options_endpoint)
        app.router.add_delete(f"{prefix}/{{stream}}/{{session}}", delete)
        app.router.add_patch(f"{prefix}/{{stream}}/{{session}}", patch)
        app.router.add_route("OPTIONS", f"{prefix}/{{stream}}/{{session}}", options_resource)
