"""End to end through ``POST /offer`` (the web page's protocol): an aiortc client sends synthetic
video and gets it back upscaled 4x, on 127.0.0.1 only."""

from __future__ import annotations

import asyncio

import numpy as np
from support.webrtc import (
    SyntheticVideo,
    identify,
    open_browser_peer,
    pattern,
    running_server,
)

from streamvsr.engine import BicubicEngine

RED = (200, 30, 30)
BLUE = (30, 30, 200)


async def stream_for(seconds: float, *peers) -> None:
    """Let the peers' media flow for ``seconds`` after each has received its first frame."""
    await asyncio.gather(*(peer.collector.wait_video(1) for peer in peers))
    await asyncio.sleep(seconds)


async def test_offer_returns_the_sent_video_upscaled_4x() -> None:
    video = SyntheticVideo()  # 64x48, a bar moving right, index code on top, 30 fps
    async with running_server(BicubicEngine("cpu")) as server:
        peer = await open_browser_peer(server.http, video)
        try:
            assert peer.extra["engine"] == "bicubic"
            assert peer.session
            await stream_for(2.5, peer)
        finally:
            await peer.close()

    received = peer.collector.video
    assert {(f.width, f.height) for f in received} == {(256, 192)}
    # Bicubic keeps up with 30 fps: nearly every sent frame comes back.
    assert len(received) >= 0.7 * video.count, (len(received), video.count)

    indices, offsets = [], set()
    for frame in received:
        n, difference = identify(frame.image, video)
        # Scaled back down, the 4x frame is the frame that was sent (codec and bicubic blur
        # included); a neighbouring frame differs by ~20 (the bar moves 3 px per frame).
        assert difference < 8, (n, difference)
        indices.append(n)
        offsets.add(frame.pts - n * 3000)
    assert indices == sorted(set(indices)), "frames came back out of order or twice"
    assert indices[-1] - indices[0] >= 0.7 * video.count
    # The sent frames' timestamps are kept (up to each receiver's constant origin).
    assert len(offsets) == 1, sorted(offsets)[:10]


async def test_offer_with_the_tiny_stream_diffvsr_engine(tiny_engine) -> None:
    """The real pipeline (random tiny weights, CPU): frames arrive, 4x the sent size."""
    video = SyntheticVideo(lambda n: pattern(n, 32, 24), fps=10)
    async with running_server(tiny_engine) as server:
        peer = await open_browser_peer(server.http, video, keep_images=False)
        try:
            assert peer.extra["engine"] == "stream-diffvsr"
            await peer.collector.wait_video(3, timeout=30)
        finally:
            await peer.close()
    assert {(f.width, f.height) for f in peer.collector.video} == {(128, 96)}


def background_of(image: np.ndarray) -> np.ndarray:
    """Mean colour of a received frame below the index band, the bar's columns left out."""
    body = image[32:].astype(float)
    columns = body.mean(axis=(0, 2))
    keep = columns < np.percentile(columns, 60)
    return body[:, keep].mean(axis=(0, 1))


async def test_concurrent_sessions_never_get_each_others_frames() -> None:
    red = SyntheticVideo(lambda n: pattern(n, background=RED))
    blue = SyntheticVideo(lambda n: pattern(n, background=BLUE), first=100)
    async with running_server(BicubicEngine("cpu")) as server:
        peers = await asyncio.gather(
            open_browser_peer(server.http, red), open_browser_peer(server.http, blue)
        )
        try:
            assert peers[0].session != peers[1].session
            await stream_for(2.5, *peers)
        finally:
            await asyncio.gather(*(peer.close() for peer in peers))

    for peer, video, colour in ((peers[0], red, "red"), (peers[1], blue, "blue")):
        received = peer.collector.video
        assert len(received) >= 0.6 * video.count, (colour, len(received), video.count)
        for frame in received:
            r, _, b = background_of(frame.image)
            if colour == "red":
                assert r > 150 and b < 80, (colour, r, b)
            else:
                assert b > 150 and r < 80, (colour, r, b)
            # Its own frames (the index codes of the two streams do not overlap).
            _, difference = identify(frame.image, video)
            assert difference < 8, (colour, difference)
