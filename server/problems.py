"""RFC 9457 problem responses (``application/problem+json``) for every refused request."""

from __future__ import annotations

import json
import logging

from aiohttp import web

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise to answer a request with a problem body."""

    def __init__(self, status: int, title: str, detail: str = "", headers: dict | None = None):
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type=PROBLEM_TYPE,
            headers=self.headers,
        )


@web.middleware
async def problem_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Turn ``Problem`` and aiohttp's HTTP errors into problem bodies; never leak a 500 page."""
    try:
        return await handler(request)
    except Problem as problem:
        log.info("%s %s -> %d %s", request.method, request.path, problem.status, problem.detail)
        return problem.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return Problem(exc.status, exc.reason, exc.text or "", headers).response()
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return Problem(500, "Internal Server Error", "see the server log").response()
