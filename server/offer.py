"""``POST /offer``: the browser page's JSON offer/answer exchange."""

from __future__ import annotations

import json

from aiohttp import web

from .access import Action
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
