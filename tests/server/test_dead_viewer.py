"""A WHEP viewer that stops sending (its machine went away, no DELETE) is closed within
``viewer_timeout_s``, and its encoder freed; a live viewer stays."""

from __future__ import annotations

import asyncio
import time

from support.hostile import (
    connect,
    connected_publisher,
    go_silent,
    post_sdp,
    registry_of,
)
from support.webrtc import running_server, viewer_offer, wait_until

from streamvsr.engine import BicubicEngine

TIMEOUT_S = 2.0


async def test_a_silent_viewer_is_closed_and_a_live_one_stays() -> None:
    settings = {"viewer_timeout_s": TIMEOUT_S}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        registry = registry_of(server)
        async with connected_publisher(server):
            viewers = []
            for _ in range(2):
                pc, collector, offer = await viewer_offer(keep_images=False)
                status, answer, location = await post_sdp(server, "/whep/cam", offer)
                assert status == 201, answer
                await connect(pc, answer)
                viewers.append((pc, collector, location.rsplit("/", 1)[1]))
            (dead, _, dead_id), (_, collector, live_id) = viewers
            try:
                await asyncio.sleep(TIMEOUT_S)  # both stay while they report
                assert registry.get(dead_id) and registry.get(live_id)
                go_silent(dead)
                silent_at = time.monotonic()

                async def closed() -> bool:
                    return registry.get(dead_id) is None

                await wait_until(closed, TIMEOUT_S + 3, "the silent viewer to be closed")
                assert time.monotonic() - silent_at < TIMEOUT_S + 1.5
                frames = len(collector.video)
                await collector.wait_video(frames + 10)
                assert registry.get(live_id) is not None
            finally:
                for pc, collector, _ in viewers:
                    await pc.close()
                    await collector.stop()
