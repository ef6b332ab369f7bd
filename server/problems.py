"""RFC 9457 problem responses (``application/problem+json``) for every refused request."""

from __future__ import annotations

import functools
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

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
        # repr: the path and details hold client text, which must not forge log lines.
        log.info("%s %r -> %d %r", request.method, request.path, problem.status, problem.detail)
        return problem.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return Problem(exc.status, exc.reason, exc.text or "", headers).response()
    except Exception:
        log.exception("unexpected error in %s %r", request.method, request.path)
        return Problem(500, "Internal Server Error", "see the server log").response()


def problem_for_refused_http(handle_error):
    """Wraps aiohttp's ``RequestHandler.handle_error``: malformed HTTP that aiohttp refuses gets
    a problem body too (aiohttp writes text/plain)."""

    @functools.wraps(handle_error)
    def wrapper(self, request, status=500, exc=None, message=None):
        response = handle_error(self, request, status, exc, message)
        if 400 <= status < 500:
            reason = exc.message if isinstance(exc, HttpProcessingError) else ""
            detail = f"malformed HTTP request: {reason.splitlines()[0] if reason else status}"
            response.body = Problem(status, response.reason, detail[:200]).response().body
            response.content_type = PROBLEM_TYPE
        return response

    return wrapper


def quiet_client_errors(record: logging.LogRecord) -> bool:
    """A logging filter for aiohttp's server: a request that it refuses as malformed HTTP (or
    whose body does not decode) is the client's mistake, so one bounded INFO line, not an ERROR
    with a traceback per request."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, web.RequestPayloadError):
        exc = exc.__cause__
    if isinstance(exc, HttpProcessingError):
        message = record.getMessage()
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "%s: %.200r", (message, exc.message)
        record.exc_info = record.exc_text = None
    return True
