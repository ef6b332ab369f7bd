"""WHIP ingest (RFC 9725, e.g. from OBS) and WHEP playback (draft-ietf-wish-whep) endpoints.

Both follow one shape: ``POST`` an SDP offer to the endpoint -> ``201 Created`` with ``Location``
(the session resource) and the SDP answer; ``DELETE`` on the resource ends the session. There is
no server-side trickle ICE in aiortc (every candidate is in the answer), so ``PATCH`` is 405.
"""

from __future__ import annotations

from aiohttp import web

from streamvsr.config import ServerSettings

from .http import RUNTIME, check_bearer, cors_headers, require_content_type, runtime_of
from .ice import link_headers
from .peers import open_publisher, open_viewer
from .problems import Problem

SDP = "application/sdp"
DEFAULT_STREAM = "live"
SETTINGS = web.AppKey("server_settings", ServerSettings)


def _settings(request: web.Request) -> ServerSettings:
    return request.app[SETTINGS]


def _created(request: web.Request, kind: str, stream: str, session_id: str, answer: str):
    settings = _settings(request)
    headers = {
        "Location": f"/{kind}/{stream}/{session_id}",
        "ETag": f'"{session_id}"',
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
    session, answer = await open_publisher(rt, "whip", await request.text(), stream)
    return _created(request, "whip", stream, session.id, answer)


async def post_whep(request: web.Request) -> web.Response:
    require_content_type(request, SDP)
    rt = runtime_of(request)
    stream = request.match_info["stream"]
    session, answer = await open_viewer(rt, stream, await request.text())
    return _created(request, "whep", stream, session.id, answer)


def _resource(request: web.Request, kind: str):
    rt = request.app.get(RUNTIME)
    session = rt.registry.get(request.match_info["session"]) if rt else None
    if session is None or session.kind != kind or session.stream != request.match_info["stream"]:
        raise Problem(404, "No such session", f"{request.path} is not an open {kind} session")
    return rt, session


async def delete_whip(request: web.Request) -> web.Response:
    check_bearer(request, _settings(request).whip_token)
    return await _delete(request, "whip")


async def delete_whep(request: web.Request) -> web.Response:
    return await _delete(request, "whep")


async def _delete(request: web.Request, kind: str) -> web.Response:
    rt, session = _resource(request, kind)
    await rt.registry.close(session, "DELETE by the client")
    headers = cors_headers(_settings(request).cors_origin, "DELETE, PATCH, OPTIONS")
    return web.Response(status=200, headers=headers)


async def patch_resource(request: web.Request) -> web.Response:
    kind = request.path.split("/")[1]
    if kind == "whip":
        check_bearer(request, _settings(request).whip_token)
    _resource(request, kind)
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
    for kind, post, delete in (("whip", post_whip, delete_whip), ("whep", post_whep, delete_whep)):
        app.router.add_post(f"/{kind}/{{stream}}", post)
        app.router.add_route("OPTIONS", f"/{kind}/{{stream}}", options_endpoint)
        app.router.add_delete(f"/{kind}/{{stream}}/{{session}}", delete)
        app.router.add_patch(f"/{kind}/{{stream}}/{{session}}", patch_resource)
        app.router.add_route("OPTIONS", f"/{kind}/{{stream}}/{{session}}", options_resource)
