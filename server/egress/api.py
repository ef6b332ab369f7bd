"""The egress API: ``/api/streams/{stream}/record`` and ``/forward`` (POST starts, DELETE stops)
and ``/egress`` (lists them), all with the ``api`` permission; egresses are finished at
shutdown."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..access import Action
from ..http import RUNTIME, authorize, read_body, runtime_of
from ..metrics import Metrics
from ..problems import Problem
from .manager import egresses_of
from .targets import forward_url

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..sessions import WhipSession

FORWARD_KINDS = ("rtmp", "whip")


def _live_session(rt: Runtime, stream: str) -> WhipSession:
    session = rt.registry.source_of(stream)
    if session is None:
        raise Problem(404, "Stream not live", f"stream {stream[:64]!r} has no publisher")
    return session


def _json(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status)


async def post_record(request: web.Request) -> web.Response:
    """Record a live stream to ``record_dir``: 201, or 200 if it is being recorded already."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    session = _live_session(rt, request.match_info["stream"])
    if not rt.settings.record_dir:
        raise Problem(409, "Recording is off", "set server.record_dir to record streams")
    manager = egresses_of(rt.metrics)
    existing = manager.get(session, "record")
    if existing is not None and existing.state != "failed":
        return _json(200, existing.describe())
    if existing is not None:
        await existing.stop()
    return _json(201, manager.record(session, rt).describe())


async def delete_record(request: web.Request) -> web.Response:
    """Stop recording a stream; answers once the file is finished."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    session = _live_session(rt, request.match_info["stream"])
    egress = egresses_of(rt.metrics).get(session, "record")
    if egress is None:
        raise Problem(404, "Not recorded", f"stream {session.stream!r} is not being recorded")
    await egress.stop()
    return _json(200, egress.describe())


async def _url_of(request: web.Request, required: bool) -> str | None:
    body = await read_body(request)
    if not body.strip() and not required:
        return None
    try:
        url = json.loads(body)["url"]
    except (ValueError, TypeError, KeyError):
        raise Problem(
            400,
            "Bad request body",
            'the body must be JSON: {"url": "rtmp://..."} or {"url": "https://..."}',
        ) from None
    try:
        return forward_url(url)
    except ValueError as exc:
        raise Problem(400, "Bad forward URL", str(exc)) from None


async def post_forward(request: web.Request) -> web.Response:
    """Forward a live stream to {"url": ...}, by RTMP push (rtmp://, rtmps://) or WHIP (http://,
    https://): 201, or 200 if it is forwarded there already."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    url = await _url_of(request, required=True)
    session = _live_session(rt, request.match_info["stream"])
    manager = egresses_of(rt.metrics)
    existing = manager.get(session, url)
    if existing is not None:
        return _json(200, existing.describe())
    return _json(201, manager.forward(session, url, rt).describe())


async def delete_forward(request: web.Request) -> web.Response:
    """Stop forwarding a stream to {"url": ...}, or (without a body) to every target."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    url = await _url_of(request, required=False)
    session = _live_session(rt, request.match_info["stream"])
    manager = egresses_of(rt.metrics)
    forwards = [e for e in manager.of(session) if e.kind in FORWARD_KINDS and url in (None, e.url)]
    if not forwards:
        raise Problem(404, "Not forwarded", f"stream {session.stream!r} has no such forward")
    await asyncio.gather(*(e.stop() for e in forwards))
    return _json(200, [e.describe() for e in forwards])


async def get_egress(request: web.Request) -> web.Response:
    """A live stream's recording and forwards, with their states."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    session = _live_session(rt, request.match_info["stream"])
    return _json(200, [e.describe() for e in egresses_of(rt.metrics).of(session)])


async def _finish_all(app: web.Application) -> None:
    """At shutdown (after the sessions have closed): wait for files and connections to be
    finished."""
    rt = app.get(RUNTIME)
    if rt is not None:
        await egresses_of(rt.metrics).close_all()


_ROUTES_ADDED = web.AppKey("egress_routes", bool)


def add_routes(app: web.Application) -> None:
    """The egress API, and finishing the egresses at shutdown (once per app)."""
    if app.get(_ROUTES_ADDED):
        return
    app[_ROUTES_ADDED] = True
    app.router.add_post("/api/streams/{stream}/record", post_record)
    app.router.add_delete("/api/streams/{stream}/record", delete_record)
    app.router.add_post("/api/streams/{stream}/forward", post_forward)
    app.router.add_delete("/api/streams/{stream}/forward", delete_forward)
    app.router.add_get("/api/streams/{stream}/egress", get_egress)
    app.on_startup.append(_show_metrics)
    app.on_cleanup.append(_finish_all)


async def _show_metrics(app: web.Application) -> None:
    """The egress metrics from the start (at 0), not from the first egress on."""
    for value in list(app.values()):
        if isinstance(value, Metrics):
            egresses_of(value)
