"""``streamvsr serve``: the real-time server."""

from __future__ import annotations

import argparse
import logging

from streamvsr.flags import add_engine_flags, add_server_flags, settings_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the real-time server (WebRTC, WHIP, WHEP, metrics)",
        description="Serve the browser page, WebRTC offer/answer, WHIP ingest (OBS), WHEP "
        "playback, /metrics, /healthz and /readyz. The engine loads in the background; /readyz "
        "says when it is ready.",
    )
    add_engine_flags(p)
    add_server_flags(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import ssl

    import uvloop
    from aiohttp import web

    from streamvsr.engines import create_engines

    from .app import create_app

    settings = settings_from_args(args)
    server = settings.server
    choice = None
    if settings.engine.kind == "stream-diffvsr":
        # Asked for explicitly: refuse to start without it (auto loads in the background).
        log.info("loading Stream-DiffVSR (%s) before serving", settings.engine.model)
        choice = create_engines(settings.engine)
    context = None
    if server.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server.tls_cert, server.tls_key)
    scheme = "https" if context else "http"
    log.info("serving on %s://%s:%d/", scheme, server.host, server.port)
    web.run_app(
        create_app(settings, choice), host=server.host, port=server.port, ssl_context=context,
        print=None, loop=uvloop.new_event_loop(), shutdown_timeout=5,
    )  # fmt: skip
    return 0
