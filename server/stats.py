"""``GET /api/stats``: the server's own numbers for the browser page, as JSON.

Read from the app's Prometheus registry (no new metrics, no per-session labels). Counters are
server-wide totals since start; a client polls and takes differences between two answers for
rates and for the mean latency over that interval.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from .access import Action
from .cluster.routing import CLUSTER, PROXY
from .http import authorize, runtime_of
from .metrics import DROP_REASONS, SESSION_KINDS, Metrics


def stats_of(metrics: Metrics) -> dict[str, Any]:
    """Totals since start: frames, drops by reason, and the sum/count of two latencies (s)."""

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    dropped = {r: int(sample("streamvsr_frames_dropped_total", reason=r)) for r in DROP_REASONS}
    encode_sum = encode_count = 0.0
    for family in metrics.encode.collect():
        for s in family.samples:
            if s.name.endswith("_sum"):
                encode_sum += s.value
            elif s.name.endswith("_count"):
                encode_count += s.value
    return {
        "frames_received": int(sample("streamvsr_frames_received_total")),
        "frames_sent": int(sample("streamvsr_frames_sent_total")),
        "frames_dropped": sum(dropped.values()),
        "frames_dropped_by_reason": dropped,
        # receive -> handed to the sender (queue wait + engine step + conversions)
        "latency_seconds_sum": sample("streamvsr_frame_latency_seconds_sum"),
        "latency_count": int(sample("streamvsr_frame_latency_seconds_count")),
        "encode_seconds_sum": encode_sum,
        "encode_count": int(encode_count),
        "sessions": {k: int(sample("streamvsr_sessions_active", kind=k)) for k in SESSION_KINDS},
    }


async def get_stats(request: web.Request) -> web.Response:
    """``?session=<id>`` adds ``session_open``: whether that session is still open here (a page
    learns at once that the server ended its session, instead of waiting for ICE to time out).
    Users with the api permission may read it; a page may with the id of its open session."""
    session = request.query.get("session")
    rt = runtime_of(request)  # 503 "Not ready" while the engine loads
    node_url = request.app[CLUSTER].url_of(session) if session else None
    if node_url is not None:  # a page session proxied to another node: its numbers are there
        url = f"{node_url}/api/stats?session={quote(session)}"
        return await request.app[PROXY].get(request, url)
    if not (session and (rt.registry.get(session) or rt.registry.ended.find(session))):
        authorize(request, Action.API)
    body: dict[str, Any] = {
        "engine": rt.choice.engine.name,
        "engine_reason": rt.choice.reason,
        "max_sessions": rt.registry.max_sessions,
        "devices": rt.scheduler.sessions(),  # engine sessions per device
        **stats_of(rt.metrics),
    }
    if session:
        body["session_open"] = rt.registry.get(session) is not None
    return web.json_response(body, headers={"Cache-Control": "no-store"})
