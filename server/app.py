"""The aiohttp application: routes, engine start-up off the request path, graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamvsr import startup
from streamvsr.config import Settings
from streamvsr.engine import FrameRequest
from streamvsr.engines import EngineChoice, create_engines

from . import decoding, encoders
from .access import Action, policy
from .cluster.node import ClusterNode, SingleNode
from .cluster.routing import CLUSTER, PROXY, Proxy
from .devices import DevicePool, device_labels
from .egress import add_routes as add_egress_routes
from .http import ACCESS, RUNTIME, allowed, authorize
from .ice import rtc_configuration
from .metrics import Metrics
from .offer import post_offer
from .origins import add_cors_headers, host_middleware
from .problems import Problem, problem_middleware
from .runtime import Runtime
from .scheduler import FrameScheduler
from .sessions import SessionRegistry
from .stats import get_stats
from .whip_whep import SETTINGS, add_routes

log = logging.getLogger(__name__)

WEB_ROOT = Path(str(resources.files("streamvsr.web")))  # the page, shipped as package data
METRICS = web.AppKey("metrics", Metrics)
STARTUP = web.AppKey("startup", asyncio.Task)
STATUS = web.AppKey("status", dict)
ENCODERS = web.AppKey("encoders", encoders.Encoders)


def create_app(
    settings: Settings,
    choice: EngineChoice | list[EngineChoice] | None = None,
    on_drained: Callable[[], None] = lambda: signal.raise_signal(signal.SIGTERM),
) -> web.Application:
    """The server; ``choice`` (or a list, one per device) skips loading engines from the
    settings (tests, embedding).
    ``on_drained``: what a drained cluster node does (by default it stops, as on SIGTERM)."""
    app = web.Application(
        middlewares=[problem_middleware, host_middleware],
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = settings.server
    app[ACCESS] = policy(settings.server.users, settings.server.whip_token)
    app[METRICS] = Metrics()
    app[STATUS] = {"ready": False, "reason": "the engine is loading"}
    app[CLUSTER] = cluster_node(settings, app[METRICS], on_drained)
    app[PROXY] = Proxy()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/offer", post_offer)
    app.router.add_get("/api/stats", get_stats)
    add_routes(app)
    add_egress_routes(app)  # recordings and RTMP forwards of WHIP streams
    if WEB_ROOT.is_dir():
        app.router.add_get("/", index)
        app.router.add_static("/static/", WEB_ROOT)
    app.on_response_prepare.append(add_cors_headers)
    h264_codec = encoders.select_h264_encoder(settings.server.h264_encoder)  # ConfigError: no NVENC

    async def start(app: web.Application) -> None:
        app[ENCODERS] = encoders.Encoders(
            encoders.EncoderSettings.from_server(settings.server, h264_codec),
            lambda codec, seconds: app[METRICS].encode.labels(codec).observe(seconds),
            app[METRICS].frame_encoded_latency.observe,
        )  # fmt: skip
        startup.install(
            encoder_factory=app[ENCODERS].for_sender,
            decoder_factory=decoding.decoder_factory(app[METRICS].undecodable_frames.inc),
            host_addresses=settings.server.ice_host_addresses,
            udp_ports=(settings.server.udp_port_min, settings.server.udp_port_max),
            traffic_consent=True,
            dtls_failure_log=True,
            client_http_errors=True,
            # Bounded memory and threads per session (bench-churn: +23 -> +1.4 MiB per 1000).
            malloc_arenas=2,
            trim_after_close=True,
            ffmpeg_cpus=1,
        )
        app[STARTUP] = asyncio.create_task(_start_engine(app, settings, choice))

    app.on_startup.append(start)
    app.on_shutdown.append(_shutdown)
    return app


def cluster_node(
    settings: Settings, metrics: Metrics, on_drained: Callable[[], None]
) -> SingleNode:
    """This server's place in a cluster (``cluster.redis_url``), or a single node."""
    cluster, server = settings.cluster, settings.server
    if not cluster.redis_url:
        return SingleNode()
    scheme = "https" if server.tls_cert else "http"
    url = cluster.advertise_url or f"{scheme}://{server.host}:{server.port}"
    return ClusterNode(cluster, url, metrics, server.max_sessions, server.max_viewers, on_drained)


async def _start_engine(
    app: web.Application, settings: Settings, choice: EngineChoice | list[EngineChoice] | None
):
    """Load and warm the engine (a copy per device) in a thread; the server answers (503)
    meanwhile, and is ready when every device is."""
    metrics, status = app[METRICS], app[STATUS]
    loop = asyncio.get_running_loop()
    try:
        if choice is None:
            choices = await loop.run_in_executor(None, create_engines, settings.engine)
        else:
            choices = [choice] if isinstance(choice, EngineChoice) else list(choice)
        for each in choices:
            await loop.run_in_executor(None, warm_up, each, settings)
    except Exception as exc:
        log.exception("the engine could not start")
        status.update(ready=False, reason=f"the engine could not start: {exc}")
        return
    pool = _device_pool(choices, settings, metrics, loop)
    pool.start()
    registry = SessionRegistry(
        settings.server.max_sessions, pool, metrics,
        settings.server.max_viewers, settings.server.max_viewers_per_stream,
    )  # fmt: skip
    choice, engine = choices[0], choices[0].engine
    app[RUNTIME] = Runtime(
        settings.server, choice, metrics, pool, registry,
        rtc_configuration(settings.server.ice_servers), app[ENCODERS],
        base_seed=settings.engine.seed,
    )  # fmt: skip
    metrics.model.info(
        {"engine": engine.name, "model": str(getattr(engine, "model_id", "") or engine.name),
         "device": ", ".join(pool.labels), "dtype": str(engine.dtype).removeprefix("torch."),
         "reason": choice.reason}
    )  # fmt: skip
    await app[CLUSTER].start(registry)
    metrics.ready.set(1)
    status.update(ready=True, engine=engine.name, reason=choice.reason, devices=pool.labels)
    log.info("ready: engine %s on %s (%s)", engine.name, ", ".join(pool.labels), choice.reason)


def _device_pool(
    choices: list[EngineChoice], settings: Settings, metrics: Metrics, loop
) -> DevicePool:
    """A GPU worker per engine copy, each counted under its device's label."""
    labels = device_labels([str(c.engine.device) for c in choices])
    workers = []
    for each, label in zip(choices, labels, strict=True):
        workers.append(FrameScheduler(
            each.engine, loop, settings.server.max_batch, settings.server.max_wait_ms,
            on_step=functools.partial(metrics.record_step, device=label),
            on_drop=lambda reason: metrics.frames_dropped.labels(reason).inc(),
        ))  # fmt: skip
    pool = DevicePool(workers, labels)
    for label in labels:
        metrics.device_sessions.labels(label).set_function(
            lambda label=label: pool.sessions()[label]
        )
    return pool


def warm_up(choice: EngineChoice, settings: Settings) -> None:
    """Run two frames (the first-frame and the temporal path), and compile the configured sizes
    for every batch size, so that no user waits for it."""
    engine = choice.engine
    state = engine.new_session(0)
    frame = np.zeros((64, 64, 3), np.uint8)
    for _ in range(2):
        [result] = engine.step([FrameRequest(state, frame)])
        state = result.state
    started = time.perf_counter()
    engine.warm_up(settings.engine.warmup_sizes, range(1, settings.server.max_batch + 1))
    if settings.engine.compile != "off":
        log.info("compiled and warmed up in %.0f s", time.perf_counter() - started)


async def _shutdown(app: web.Application) -> None:
    startup = app.get(STARTUP)
    if startup is not None and not startup.done():
        startup.cancel()
    await app[CLUSTER].stop()
    await app[PROXY].close()
    rt = app.get(RUNTIME)
    if rt is not None:
        await rt.registry.close_all()
        await asyncio.get_running_loop().run_in_executor(None, rt.scheduler.stop)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Ready or not for everyone; the engine, why it was chosen and the session count for users
    with the api permission."""
    status = request.app[STATUS]
    detailed = allowed(request, Action.API)
    if not status["ready"]:
        reason = status["reason"] if detailed else "the engine is not ready"
        raise Problem(503, "Not ready", reason, {"Retry-After": "5"})
    cluster = request.app[CLUSTER]
    if cluster.draining:  # load balancers: send no one here any more
        raise Problem(503, "Draining", "this node takes no new sessions", {"Retry-After": "30"})
    if not detailed:
        return web.json_response({"ready": True})
    rt = request.app[RUNTIME]
    body = {**status, "sessions": len(rt.registry)}
    if cluster.status():
        body["cluster"] = cluster.status()
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    authorize(request, Action.METRICS)
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_ROOT / "index.html")
