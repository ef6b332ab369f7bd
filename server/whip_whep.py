"""WHIP ingest (RFC 9725, e.g. from OBS) and WHEP playback (draft-ietf-wish-whep) endpoints.

Both follow one shape: ``POST`` an SDP offer to the endpoint -> ``201 Created`` with ``Location``
(the session resource), ``ETag`` and the SDP answer; ``DELETE`` on the resource ends the session
(200 also when it ended lately). ``PATCH`` with an SDP fragment trickles the client's candidates
(204); our own are all in the answer (aiortc gathers them at once), and aiortc cannot restart ICE
(422).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web
from aiortc import RTCPeerConnection

from streamvsr.config import ServerSettings

from .access import Action
from .cluster.routing import CLUSTER, engine_placement, redirect, stream_redirect
from .http import (
    RUNTIME,
    SETTINGS,
    allowed,
    authorize,
    read_text,
    require_content_type,
    runtime_of,
)
from .ice import link_headers
from .peers import open_whep, open_whip
from .problems import Problem
from .sdp import IceFragment, ice_credentials, media_ids, parse_ice_fragment
from .sessions import PeerSession, WhepSession, WhipSession

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
DEFAULT_STREAM = "live"
# Unreserved URL characters only: a name goes into Location and logs as it is, and no client
# normalises it away ("." and ".." are refused too).
STREAM_NAME = re.compile(r"(?!\.+$)[A-Za-z0-9._~-]{1,64}")
ResourceType = type[WhipSession] | type[WhepSession]  # what a session URL names


def _settings(request: web.Request) -> ServerSettings:
    return request.app[SETTINGS]


def _created(request: web.Request, location: str, session: PeerSession, answer: str):
    settings = _settings(request)
    headers = {
        "Location": request.app[CLUSTER].location(location),
        "ETag": _etag(session),
        "Accept-Patch": TRICKLE,
    }
    response = web.Response(status=201, text=answer, content_type=SDP, headers=headers)
    for link in link_headers(settings.ice_servers):
        response.headers.add("Link", link)
    return response


async def post_whip(request: web.Request) -> web.Response:
    """In a cluster, a publisher this node cannot take is sent (307) to one that can."""
    stream = _stream_name(request)
    authorize(request, Action.PUBLISH, stream)
    require_content_type(request, SDP)
    rt = runtime_of(request)
    offer = await read_text(request)
    async with engine_placement(request, stream, "redirect") as placement:
        if not placement.here:
            raise redirect(placement, f"/whip/{quote(stream)}")
        session, answer = await open_whip(rt, stream, offer)
    return _created(request, f"/whip/{quote(stream)}/{session.id}", session, answer)


async def post_whep(request: web.Request) -> web.Response:
    """In a cluster, a viewer of a stream published on another node is sent (307) there."""
    stream = _stream_name(request)
    authorize(request, Action.READ, stream)
    require_content_type(request, SDP)
    rt = runtime_of(request)
    node_url = await request.app[CLUSTER].stream_url(stream)
    if node_url is not None:
        raise stream_redirect(node_url, f"/whep/{quote(stream)}")
    session, answer = await open_whep(rt, stream, await read_text(request))
    return _created(request, f"/whep/{quote(stream)}/{session.id}", session, answer)


def _stream_name(request: web.Request) -> str:
    """The URL's stream name, checked before anything is opened for it."""
    name = request.match_info.get("stream", DEFAULT_STREAM)
    if not STREAM_NAME.fullmatch(name):
        raise Problem(
            400, "Bad stream name",
            "a stream name is 1-64 of the characters A-Z a-z 0-9 . _ ~ - (not only dots)",
        )  # fmt: skip
    return name


def _etag(session: PeerSession) -> str:
    """The entity tag of the session's ICE session: it never restarts, so one per session."""
    return f'"{session.id}"'


def _resource(request: web.Request, session_type: ResourceType):
    """The session that the URL names: an open one of that type, on that stream."""
    rt = request.app.get(RUNTIME)
    session = rt.registry.get(request.match_info["session"]) if rt else None
    if not isinstance(session, session_type) or session.stream != request.match_info["stream"]:
        raise Problem(
            404, "No such session", f"{request.path} is not an open {session_type.kind} session"
        )
    return rt, session


def _ended_lately(request: web.Request, session_type: ResourceType) -> bool:
    rt = request.app.get(RUNTIME)
    ended = rt and rt.registry.ended.find(request.match_info["session"])
    return ended == (session_type.kind, request.match_info["stream"])


# DELETE and PATCH need no token: the session URL's id is the secret (see access.py).


async def delete_whip(request: web.Request) -> web.Response:
    return await _delete(request, WhipSession)


async def delete_whep(request: web.Request) -> web.Response:
    return await _delete(request, WhepSession)


async def _delete(request: web.Request, session_type: ResourceType) -> web.Response:
    if not _ended_lately(request, session_type):
        rt, session = _resource(request, session_type)
        await rt.registry.close(session, "DELETE by the client")
    return web.Response(status=200)


async def patch_whip(request: web.Request) -> web.Response:
    return await _patch(request, WhipSession)


async def patch_whep(request: web.Request) -> web.Response:
    return await _patch(request, WhepSession)


async def _patch(request: web.Request, session_type: ResourceType) -> web.Response:
    """Trickle ICE (RFC 9725 section 4.3): the client's candidates, sent after its offer."""
    _, session = _resource(request, session_type)
    require_content_type(request, TRICKLE)
    _check_if_match(request, session)
    fragment = parse_ice_fragment(await read_text(request))
    offer = session.pc.remoteDescription.sdp
    _refuse_restart(fragment, offer)
    await _add_candidates(session.pc, fragment, media_ids(offer))
    return web.Response(status=204)


def _check_if_match(request: web.Request, session: PeerSession) -> None:
    given = request.headers.get("If-Match")
    if given is None or given.strip() == "*":
        return
    if _etag(session) not in (tag.strip() for tag in given.split(",")):
        raise Problem(
            412, "Precondition Failed",
            f"If-Match {given} is not this ICE session's ETag {_etag(session)}",
        )  # fmt: skip


def _refuse_restart(fragment: IceFragment, offer: str) -> None:
    ufrag, pwd = ice_credentials(offer)
    if fragment.ufrag not in (None, ufrag) or fragment.pwd not in (None, pwd):
        raise Problem(
            422, "ICE restart not supported",
            "the fragment's ice-ufrag/ice-pwd differ from the offer's: aiortc cannot restart ICE; "
            "DELETE this session and POST a new offer",
        )  # fmt: skip


async def _add_candidates(pc: RTCPeerConnection, fragment: IceFragment, mids: list[str]) -> None:
    for section in fragment.sections:
        if section.mid is not None and section.mid not in mids:
            raise Problem(
                400, "Unknown mid", f"mid {section.mid!r} is not in the offer (it has {mids})"
            )
    for section in fragment.sections:
        for candidate in section.candidates:
            # Matched by mid; a section without one by its position (m= lines follow the offer's).
            candidate.sdpMid = section.mid
            candidate.sdpMLineIndex = section.index if section.mid is None else None
            await pc.addIceCandidate(candidate)
    if fragment.end:  # aiortc ends them all at once: BUNDLE has one ICE transport anyway
        await pc.addIceCandidate(None)


async def options_endpoint(request: web.Request) -> web.Response:
    """CORS preflight and the ICE servers; TURN credentials only to a client that may POST."""
    response = web.Response(status=204, headers={"Accept-Post": SDP})
    action = Action.PUBLISH if request.path.startswith("/whip") else Action.READ
    if allowed(request, action, request.match_info.get("stream", DEFAULT_STREAM)):
        for link in link_headers(_settings(request).ice_servers):
            response.headers.add("Link", link)
    return response


async def options_resource(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Patch": TRICKLE})


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
