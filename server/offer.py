"""``POST /offer``: the browser page's JSON offer/answer exchange."""

from __future__ import annotations

import json

from aiohttp import web

from .access import Action
from .cluster.node import Placement
from .cluster.routing import CLUSTER, PROXY, engine_placement
from .http import authorize, read_text, require_content_type, runtime_of
from .peers import open_browser
from .problems import Problem


async def post_offer(request: web.Request) -> web.Response:
    authorize(request, Action.UPSCALE)
    require_content_type(request, "application/json")
    rt = runtime_of(request)
    text = await read_text(request)
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Problem(400, "Malformed JSON", str(exc)) from None
    except (ValueError, RecursionError):  # integers past Python's digit limit, deep nesting
        raise Problem(400, "Malformed JSON", "too deeply nested, or a number too long") from None
    if (
        not isinstance(body, dict)
        or body.get("type") != "offer"
        or not isinstance(body.get("sdp"), str)
    ):
        raise Problem(400, "Bad offer", 'expected {"type": "offer", "sdp": "..."}')
    async with engine_placement(request, None, "proxy") as placement:
        if not placement.here:  # to the chosen node; its answer has its own ICE candidates
            response = await request.app[PROXY].offer(request, placement, body)
            _remember(request, response, placement)
            return response
        session, answer = await open_browser(rt, body["sdp"])
    return web.json_response(
        {
            "type": "answer",
            "sdp": answer,
            "session": session.id,
            "engine": rt.choice.engine.name,
            "engine_reason": rt.choice.reason,
        }
    )


def _remember(request: web.Request, response: web.Response, placement: Placement) -> None:
    """The node of a proxied page session, for the page's /api/stats?session=ID."""
    if response.status == 200:
        try:
            session = json.loads(response.body)["session"]
        except (ValueError, KeyError, TypeError):
            return
        request.app[CLUSTER].remember(session, placement.url)
