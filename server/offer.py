"""``POST /offer``: the browser page's JSON offer/answer exchange."""

from __future__ import annotations

import json

from aiohttp import web

from .http import require_content_type, runtime_of
from .peers import open_browser
from .problems import Problem


async def post_offer(request: web.Request) -> web.Response:
    require_content_type(request, "application/json")
    rt = runtime_of(request)
    try:
        body = json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, "Malformed JSON", str(exc)) from exc
    if (
        not isinstance(body, dict)
        or body.get("type") != "offer"
        or not isinstance(body.get("sdp"), str)
    ):
        raise Problem(400, "Bad offer", 'expected {"type": "offer", "sdp": "..."}')
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
