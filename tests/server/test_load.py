"""The server under load: an engine slower than the input rate, and batching across sessions."""

from __future__ import annotations

import asyncio
import statistics
import time

from support.webrtc import (
    SyntheticVideo,
    histogram_mean,
    histogram_quantile,
    identify,
    open_browser_peer,
    pattern,
    running_server,
    value,
)

from streamvsr.engine import BicubicEngine


class SlowBicubic(BicubicEngine):
    """Bicubic behind a step that takes ``delay`` seconds more (a slow GPU)."""

    def __init__(self, delay: float):
        super().__init__("cpu")
        self.delay = delay

    def step(self, requests, timer=None, pixel_format="rgb24"):
        time.sleep(self.delay)
        return super().step(requests, timer, pixel_format)


async def test_overload_drops_stale_frames_and_keeps_latency_bounded() -> None:
    """30 fps in, 150 ms per engine step (~6.7 fps): frames are dropped, not queued."""
    video = SyntheticVideo()
    async with running_server(SlowBicubic(0.15)) as server:
        peer = await open_browser_peer(server.http, video)
        try:
            await peer.collector.wait_video(1)
            await asyncio.sleep(3.0)
            samples = await server.scrape()
        finally:
            await peer.close()

    received = peer.collector.video
    # Client-side delay of each delivered frame: arrival minus the moment it was sent.
    delays = []
    for frame in received:
        n, difference = identify(frame.image, video)
        assert difference < 8
        delays.append((frame.at, frame.at - video.sent[n][0]))
    assert len(delays) >= 10, len(delays)
    assert max(d for _, d in delays) < 1.0, delays
    start, end = delays[0][0], delays[-1][0]
    first = [d for t, d in delays if t < start + 1.0]
    last = [d for t, d in delays if t > end - 1.0]
    # Does not grow: with an unbounded queue it would rise by ~0.5 s per second of input here.
    assert statistics.median(last) < statistics.median(first) + 0.15, (first, last)

    assert value(samples, "streamvsr_frames_dropped_total", reason="stale") > 0
    received_total = value(samples, "streamvsr_frames_received_total")
    sent_total = value(samples, "streamvsr_frames_sent_total")
    assert sent_total < 0.5 * received_total, (sent_total, received_total)
    # Server-side latency: about one to two steps, well under a second.
    assert histogram_quantile(samples, "streamvsr_frame_latency_seconds", 0.95) <= 0.5
    assert 0.1 < histogram_mean(samples, "streamvsr_frame_latency_seconds") < 0.5
    assert histogram_quantile(samples, "streamvsr_queue_wait_seconds", 0.95) <= 0.3


async def test_frames_of_concurrent_sessions_share_engine_steps() -> None:
    red = SyntheticVideo(lambda n: pattern(n, background=(200, 30, 30)))
    blue = SyntheticVideo(lambda n: pattern(n, background=(30, 30, 200)), first=100)
    async with running_server(SlowBicubic(0.02), server={"max_wait_ms": 20}) as server:
        peers = await asyncio.gather(
            open_browser_peer(server.http, red), open_browser_peer(server.http, blue)
        )
        try:
            await asyncio.gather(*(peer.collector.wait_video(1) for peer in peers))
            await asyncio.sleep(2.0)
            samples = await server.scrape()
        finally:
            await asyncio.gather(*(peer.close() for peer in peers))

    assert histogram_mean(samples, "streamvsr_batch_size") > 1.3
    assert value(samples, "streamvsr_batch_size_bucket", le="1.0") < value(
        samples, "streamvsr_batch_size_count"
    )
    # Batched results still go to their own session.
    for peer, video in ((peers[0], red), (peers[1], blue)):
        assert len(peer.collector.video) >= 20
        for frame in peer.collector.video:
            _, difference = identify(frame.image, video)
            assert difference < 8
