"""``GET /api/stats``: the page's JSON view of the server's metrics (totals since start, the sums
and counts that give mean latencies, and whether the page's session is still open)."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.webrtc import (
    PROBLEM,
    SyntheticVideo,
    open_browser_peer,
    running_server,
    value,
    wait_until,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server.stream_encoding import VIEWER_DEPTH


class SlowStart(BicubicEngine):
    """Bicubic whose warm-up (the first two steps) takes a while: a server that is not ready."""

    def __init__(self, delay: float):
        super().__init__("cpu")
        self.delay, self.steps = delay, 0

    def step(self, requests, timer=None, pixel_format="rgb24"):
        self.steps += 1
        if self.steps <= 2:
            time.sleep(self.delay)
        return super().step(requests, timer, pixel_format)


async def stats_of(server, session: str | None = None) -> dict:
    query = f"?session={session}" if session else ""
    async with server.http.get(f"/api/stats{query}") as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def test_stats_while_loading_is_503() -> None:
    async with running_server(SlowStart(0.5), wait_ready=None) as server:
        response = await server.http.get("/api/stats")
        body = await response.json(content_type=PROBLEM)
    assert response.status == 503
    assert body["title"] == "Not ready"
    assert int(response.headers["Retry-After"]) > 0


async def test_stats_follow_a_session() -> None:
    video = SyntheticVideo()
    async with running_server(BicubicEngine("cpu"), server={"max_sessions": 3}) as server:
        idle = await stats_of(server)
        assert idle["engine"] == "bicubic" and idle["engine_reason"] == "given by the test"
        assert idle["max_sessions"] == 3
        assert idle["frames_received"] == idle["frames_sent"] == idle["latency_count"] == 0
        assert idle["sessions"] == {"browser": 0, "whip": 0, "whep": 0}
        assert "session_open" not in idle

        peer = await open_browser_peer(server.http, video, keep_images=False)
        try:
            await peer.collector.wait_video(1)
            await asyncio.sleep(1.5)
            live = await stats_of(server, peer.session)
            assert live["session_open"] is True
            assert (await stats_of(server, "0" * 32))["session_open"] is False
        finally:
            await peer.close()
        await wait_until(
            lambda: _closed(server, peer.session), 10, "the session to close", interval=0.1
        )
        after = await stats_of(server, peer.session)
        samples = await server.scrape()

    assert live["sessions"]["browser"] == 1 and after["sessions"]["browser"] == 0
    assert after["session_open"] is False
    assert live["frames_received"] >= 20 and 0 < live["frames_sent"] <= live["frames_received"]
    # Receive -> send latency in seconds: the sum over the count is a plausible mean.
    # One latency per frame its stream's encoder took; its viewer got all but those in flight.
    assert 0 <= live["latency_count"] - live["frames_sent"] <= VIEWER_DEPTH
    assert 0 < live["latency_seconds_sum"] / live["latency_count"] < 0.5
    assert live["encode_count"] > 0 and 0 < live["encode_seconds_sum"] / live["encode_count"] < 0.5
    # The same numbers as /metrics (the server is quiet now).
    assert after["frames_received"] == value(samples, "streamvsr_frames_received_total")
    assert after["frames_sent"] == value(samples, "streamvsr_frames_sent_total")
    assert after["latency_count"] == value(samples, "streamvsr_frame_latency_seconds_count")
    assert after["latency_seconds_sum"] == pytest.approx(
        value(samples, "streamvsr_frame_latency_seconds_sum")
    )
    by_reason = after["frames_dropped_by_reason"]
    for reason, count in by_reason.items():
        assert count == value(samples, "streamvsr_frames_dropped_total", reason=reason)
    assert after["frames_dropped"] == sum(by_reason.values())


async def _closed(server, session: str) -> bool:
    return (await stats_of(server, session))["session_open"] is False
