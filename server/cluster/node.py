"""This server as a node of a cluster: its heartbeat into Redis, where its new sessions go, and
draining. ``SingleNode`` is the same interface without a cluster: everything is local.

Redis is for routing only; each node's own limits stay authoritative. When Redis cannot be
reached a node goes on serving its own sessions and takes new ones while it has room, and says
so (``/readyz`` for the api, ``streamvsr_cluster_connected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from ..metrics import Metrics
from ..problems import Problem
from ..sessions import SessionRegistry
from .registry import ClusterRegistry
from .settings import ClusterSettings

log = logging.getLogger(__name__)

PLACEMENTS = ("local", "redirect", "proxy", "full")


@dataclass(frozen=True)
class Placement:
    """Where a new engine session goes: here (``url`` None) or to the node at ``url``, which
    holds a slot for it under ``token``."""

    url: str | None = None
    token: str | None = None

    @property
    def here(self) -> bool:
        return self.url is None


def busy() -> Problem:
    return Problem(
        503, "Server busy", "every node of the cluster is full; try again shortly",
        {"Retry-After": "10"},
    )  # fmt: skip


class SingleNode:
    """No cluster: every session is placed here, and the local limits answer."""

    connected = None
    draining = False

    async def start(self, registry: SessionRegistry) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def engine_slot(
        self, stream: str | None = None, token: str | None = None, how: str = "redirect"
    ) -> Placement:
        return Placement()

    async def settle(self, placement: Placement, stream: str | None, opened: bool) -> None:
        pass

    async def stream_url(self, stream: str) -> str | None:
        return None

    def location(self, path: str) -> str:
        """A session resource's URL, as ``Location`` gives it."""
        return path

    def remember(self, session_id: str, url: str) -> None:
        pass

    def url_of(self, session_id: str) -> str | None:
        return None

    def status(self) -> dict:
        return {}


class ClusterNode(SingleNode):
    def __init__(
        self,
        settings: ClusterSettings,
        url: str,
        metrics: Metrics,
        max_sessions: int,
        max_viewers: int,
        on_drained: Callable[[], None],
        registry: ClusterRegistry | None = None,
    ):
        self.settings = settings
        self.id = settings.node_id or f"{socket.gethostname()}-{url.rsplit(':', 1)[-1]}"
        self.url = url
        self.metrics = metrics
        self.slots = {"model": max_sessions, "viewer": max_viewers}
        self.on_drained = on_drained
        self.redis = registry or ClusterRegistry.from_url(settings.redis_url, settings.key_prefix)
        self.connected: bool | None = None
        self.draining = False
        self.sessions: SessionRegistry | None = None
        self._hosted: set[str] = set()
        self._proxied: OrderedDict[str, str] = OrderedDict()  # session id -> its node's URL
        self._task: asyncio.Task | None = None
        # (sum, count) of a histogram at the last heartbeat, for means over the interval
        self._last: dict[str, tuple[float, float]] = {}
        r = metrics.registry
        self.connected_gauge = Gauge(
            "streamvsr_cluster_connected", "1 while this node reaches the cluster's Redis",
            registry=r,
        )  # fmt: skip
        self.placements = Counter(
            "streamvsr_cluster_placements_total",
            "New engine sessions by where they went: local, redirect (WHIP 307), proxy (the "
            "page's offer), full (503)",
            ["placement"], registry=r,
        )  # fmt: skip
        for placement in PLACEMENTS:
            self.placements.labels(placement)
        # Slots in all and in use, per pool: what an autoscaler scales on (KEDA, used/total).
        self.slots_gauge = Gauge(
            "streamvsr_cluster_slots", "This node's session slots: model (pages, WHIP "
            "publishers) and viewer (WHEP)", ["pool"], registry=r,
        )  # fmt: skip
        self.used_gauge = Gauge(
            "streamvsr_cluster_slots_used", "This node's slots in use, by pool", ["pool"],
            registry=r,
        )  # fmt: skip

    # --- life ------------------------------------------------------------------------------

    async def start(self, registry: SessionRegistry) -> None:
        """Start the heartbeat, once the engine is ready (before, the node has no slots)."""
        self.sessions = registry
        self._task = asyncio.create_task(self._beat_forever(), name="cluster heartbeat")
        log.info("cluster node %s at %s (Redis %s)", self.id, self.url, self.redis_name)

    @property
    def redis_name(self) -> str:
        return self.settings.redis_url.rsplit("@", 1)[-1]  # without credentials

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(RedisError, OSError):
            for stream in self._hosted:
                await self.redis.unhost(self.id, stream)
        await self.redis.close()

    async def _beat_forever(self) -> None:
        # A drain mark from this node's previous life (a restart under the same id) is void.
        with contextlib.suppress(RedisError, OSError):
            await self.redis.undrain(self.id)
        while True:
            await self.beat()
            await asyncio.sleep(self.settings.heartbeat_s)

    async def beat(self) -> None:
        try:
            streams = self.sessions.streams()
            deadline = await self.redis.heartbeat(
                self.id, self._fields(), streams, self.settings.node_timeout_s
            )
            for gone in self._hosted - set(streams):
                await self.redis.unhost(self.id, gone)
            self._hosted = set(streams)
        except (RedisError, OSError) as exc:
            self._set_connected(False, exc)
            return
        self._set_connected(True)
        if deadline is not None:
            await self._drain_step(deadline)

    def _set_connected(self, connected: bool, exc: Exception | None = None) -> None:
        if connected != self.connected:
            if connected:
                log.info("cluster: connected to Redis %s", self.redis_name)
            else:
                log.warning(
                    "cluster: Redis %s unreachable (%s); serving this node's own sessions",
                    self.redis_name, exc,
                )  # fmt: skip
        self.connected = connected
        self.connected_gauge.set(int(connected))

    def _fields(self) -> dict[str, object]:
        used_model = self.sessions.in_use()
        used_viewers = self.sessions.in_use(viewers=True)
        model_slots = 0 if self.draining else self.slots["model"]
        for pool, total, used in (
            ("model", model_slots, used_model),
            ("viewer", self.slots["viewer"], used_viewers),
        ):
            self.slots_gauge.labels(pool).set(total)
            self.used_gauge.labels(pool).set(used)
        return {
            "url": self.url,
            "model_slots": model_slots,
            "model_used": used_model,
            "viewer_slots": self.slots["viewer"],
            "viewer_used": used_viewers,
            "sessions": len(self.sessions),
            "step_ms": round(self._mean("streamvsr_engine_step_seconds") * 1000, 1),
            "queue_ms": round(self._mean("streamvsr_queue_wait_seconds") * 1000, 1),
            "draining": int(self.draining),
        }

    def _mean(self, histogram: str) -> float:
        """The mean of a histogram's observations since the last heartbeat (0 when none)."""
        sample = self.metrics.registry.get_sample_value
        now = (sample(f"{histogram}_sum") or 0.0, sample(f"{histogram}_count") or 0.0)
        then = self._last.get(histogram, (0.0, 0.0))
        self._last[histogram] = now
        count = now[1] - then[1]
        return (now[0] - then[0]) / count if count else 0.0

    async def _drain_step(self, deadline_ms: float) -> None:
        if not self.draining:
            self.draining = True
            log.info("cluster: draining; no new sessions, exits when the last one ends")
        open_sessions = len(self.sessions)
        if open_sessions == 0 or time.time() * 1000 >= deadline_ms:
            log.info("cluster: drained (%d session(s) left), exiting", open_sessions)
            self.on_drained()

    # --- placement -------------------------------------------------------------------------

    async def engine_slot(
        self, stream: str | None = None, token: str | None = None, how: str = "redirect"
    ) -> Placement:
        """Where a new engine session (a WHIP publisher of ``stream``, or a page) goes; 503 when
        no node has room, 409 when another node publishes ``stream``."""
        try:
            if stream is not None and await self.stream_url(stream):
                raise Problem(
                    409, "Stream already published",
                    f"stream {stream!r} has a publisher on another node",
                )  # fmt: skip
            if token and await self.redis.release(self.id, token):
                placement = Placement()  # the slot held for this client here
            else:
                placement = await self._place()
            timeout = self.settings.node_timeout_s
            if placement.here and stream and not await self.redis.host(self.id, stream, timeout):
                raise Problem(409, "Stream already published", f"stream {stream!r} is live")
        except (RedisError, OSError) as exc:
            self._set_connected(False, exc)
            placement = Placement()  # the local limits answer
        self.placements.labels("local" if placement.here else how).inc()
        return placement

    async def _place(self) -> Placement:
        if self.connected is not True:
            return Placement()
        found = await self.redis.place(
            "" if self.draining else self.id,
            self.settings.node_timeout_s, self.settings.reservation_s,
        )  # fmt: skip
        if found is None:
            self.placements.labels("full").inc()
            raise busy()
        node_id, url, token = found
        if node_id == self.id:
            await self.redis.release(self.id, token)
            return Placement()
        return Placement(url, token)

    async def settle(self, placement: Placement, stream: str | None, opened: bool) -> None:
        """After a local open: publish the new counts at once (not at the next heartbeat)."""
        if not placement.here or self.connected is not True:
            return
        try:
            if stream is not None and not opened:
                await self.redis.unhost(self.id, stream)
            await self.redis.update(self.id, {"model_used": self.sessions.in_use()})
        except (RedisError, OSError) as exc:
            self._set_connected(False, exc)

    async def stream_url(self, stream: str) -> str | None:
        """The URL of the other node that publishes ``stream``; None if here or nowhere."""
        if self.sessions.source_of(stream) is not None or self.connected is not True:
            return None
        try:
            found = await self.redis.stream_node(stream, self.settings.node_timeout_s)
        except (RedisError, OSError) as exc:
            self._set_connected(False, exc)
            return None
        return found[1] if found and found[0] != self.id else None

    def location(self, path: str) -> str:
        """Absolute: a client that followed a 307 may resolve a relative one against the URL it
        first asked (the front door), not this node."""
        return self.url + path

    def remember(self, session_id: str, url: str) -> None:
        """A page's session that was proxied to another node (for its /api/stats)."""
        self._proxied[session_id] = url
        while len(self._proxied) > 10_000:
            self._proxied.popitem(last=False)

    def url_of(self, session_id: str) -> str | None:
        return self._proxied.get(session_id)

    def status(self) -> dict:
        return {
            "node": self.id,
            "redis": "connected" if self.connected else "unreachable",
            "draining": self.draining,
        }
