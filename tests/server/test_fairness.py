"""One heavy client must not slow the others: a 720p sender and a sender whose frame size changes
every frame, next to a small bystander, on the bicubic CPU engine; and a session whose encoder
falls behind gets no more frames upscaled than it encodes."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import statistics
import threading
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamTrack
from support.webrtc import (
    SyntheticVideo,
    identify,
    open_browser_peer,
    pattern,
    running_server,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server.encoders import Encoders
from streamvsr.server.metrics import Metrics
from streamvsr.server.publisher import Publisher
from streamvsr.server.scheduler import FrameScheduler
from streamvsr.server.tracks import (
    InputLimits,
    SessionSize,
    UpscaledTrack,
    deliver_to,
    fit_within,
    pump_video,
)

ALONE_S, TOGETHER_S = 2.5, 4.0


def quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def bystander_delays(peer, video: SyntheticVideo, since: float, until: float) -> list[float]:
    """Client-side delay (arrival minus send time) of the bystander's frames that arrived in
    [since, until)."""
    delays = []
    for frame in peer.collector.video:
        if since <= frame.at < until:
            n, _ = identify(frame.image, video)
            delays.append(frame.at - video.sent[n][0])
    return delays


async def healthz_times(server, until: float) -> list[float]:
    times = []
    while time.monotonic() < until:
        started = time.monotonic()
        async with server.http.get("/healthz") as response:
            assert response.status == 200
        times.append(time.monotonic() - started)
        await asyncio.sleep(0.1)
    return times


async def bystander_with(heavy: SyntheticVideo) -> dict[str, list[float]]:
    """The bystander's delays alone, then with ``heavy`` streaming too; /healthz times meanwhile
    and the sizes of the heavy client's output."""
    bystander = SyntheticVideo()
    async with running_server() as server:
        peer = await open_browser_peer(server.http, bystander)
        try:
            await peer.collector.wait_video(1)
            alone_from = time.monotonic()
            await asyncio.sleep(ALONE_S)
            alone_until = time.monotonic()
            heavy_peer = await open_browser_peer(server.http, heavy, keep_images=False)
            try:
                await heavy_peer.collector.wait_video(1, timeout=20)
                together_from = time.monotonic()
                healthz = await healthz_times(server, together_from + TOGETHER_S)
            finally:
                await heavy_peer.close()
        finally:
            await peer.close()
    alone = bystander_delays(peer, bystander, alone_from, alone_until)
    together = bystander_delays(peer, bystander, together_from, together_from + TOGETHER_S)
    print(
        f"bystander alone p50/p95 {quantile(alone, 0.5):.3f}/{quantile(alone, 0.95):.3f} s, "
        f"with heavy {quantile(together, 0.5):.3f}/{quantile(together, 0.95):.3f} s; "
        f"/healthz p50/p95 {quantile(healthz, 0.5) * 1000:.1f}/"
        f"{quantile(healthz, 0.95) * 1000:.1f} ms; "
        f"heavy output sizes {sorted({(f.width, f.height) for f in heavy_peer.collector.video})}"
    )
    return {
        "alone": alone,
        "together": together,
        "healthz": healthz,
        "sizes": [(f.width, f.height) for f in heavy_peer.collector.video],
    }


def assert_bystander_unharmed(result: dict[str, list[float]]) -> None:
    alone, together = result["alone"], result["together"]
    assert len(together) >= 30, len(together)  # it still gets most of its 30 fps
    # Generous bounds: the CPU is shared with other tests and processes.
    assert statistics.median(together) < 3 * statistics.median(alone) + 0.05, result
    assert quantile(together, 0.95) < 3 * quantile(alone, 0.95) + 0.1, result
    assert statistics.median(result["healthz"]) < 0.05, result["healthz"]


async def test_720p_client_does_not_slow_a_bystander() -> None:
    heavy = SyntheticVideo(lambda n: pattern(n, 1280, 720), fps=15)
    result = await bystander_with(heavy)
    assert result["sizes"] and max(w * h for w, h in result["sizes"]) <= 2560 * 1440
    # On 2 cores its 1440p x264 encoding is slower than its input: the frames its encoder cannot
    # take are skipped before the engine (see test_an_encoder_that_is_behind_...).
    assert_bystander_unharmed(result)


async def test_size_changing_client_does_not_slow_a_bystander() -> None:
    sizes = [(320, 176), (336, 192), (304, 160), (352, 208)]
    heavy = SyntheticVideo(lambda n: pattern(n, *sizes[n % len(sizes)]))
    result = await bystander_with(heavy)
    # Not a new size per frame: at most one change per 2 s (the client streams ~5-7 s).
    sizes = result["sizes"]
    changes = sum(a != b for a, b in itertools.pairwise(sizes))
    assert changes <= 4, (changes, len(sizes))
    assert_bystander_unharmed(result)


def test_pixel_budget_fits_input_keeping_aspect() -> None:
    limits = InputLimits(1280, 720, max_pixels=2560 * 1440 // 16)
    assert fit_within(1280, 720, limits) == (640, 360)
    assert fit_within(720, 1280, limits) == (360, 640)
    assert fit_within(640, 360, limits) == (640, 360)


def test_session_size_changes_at_most_every_interval() -> None:
    size = SessionSize(InputLimits(1280, 720), interval=2.0)
    assert size.target(320, 180, now=0.0) == (320, 180)
    assert size.target(336, 192, now=0.5) == (336, 192)  # a first change: at once
    assert size.target(320, 180, now=1.0) == (336, 192)  # scaled to the current size
    assert size.target(320, 180, now=2.5) == (320, 180)


class QueuedVideo(MediaStreamTrack):
    """Received video as ``pump_video`` reads it: the frames put in its queue."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.VideoFrame] = asyncio.Queue()

    def put(self, index: int) -> None:
        frame = av.VideoFrame.from_ndarray(pattern(index), format="rgb24")
        frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
        self.queue.put_nowait(frame)

    async def recv(self) -> av.VideoFrame:
        return await self.queue.get()


async def poll(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


class HeldEncoder:
    """An aiortc-style encoder that encodes (to one H.264 IDR payload, timestamped with the
    frame's pts) only once the test lets it: ``release`` lets one frame through."""

    def __init__(self) -> None:
        self.target_bitrate = 1_000_000
        self.started: list[int] = []
        self._go = threading.Semaphore(0)

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False):
        self.started.append(frame.pts)
        self._go.acquire()
        return [bytes([0x65, frame.pts])], frame.pts

    def release(self) -> None:
        self._go.release()


class HeldEncoders(Encoders):
    def __init__(self) -> None:
        super().__init__()
        self.held = HeldEncoder()

    def make(self, mime: str) -> HeldEncoder:
        return self.held


async def test_an_encoder_that_is_behind_gets_no_frames_upscaled_that_it_cannot_take() -> None:
    """The stream's encoder takes frame 0 and keeps encoding it; frame 1 is upscaled as its next;
    frames 2-5 would only replace frame 1 unencoded, so they skip the engine (``encoder_behind``).
    Once frame 0 is encoded (and the encoder takes 1), frame 6 is upscaled again."""
    metrics, steps, encoders = Metrics(), [], HeldEncoders()
    scheduler = FrameScheduler(
        BicubicEngine("cpu"), asyncio.get_running_loop(), on_step=lambda n, *_: steps.append(n)
    )
    publisher = Publisher(metrics, encoders)
    [viewer] = publisher.subscribe()
    viewer.use("video/H264")
    first = asyncio.ensure_future(viewer.recv())  # its sender: connected, asking for a frame
    scheduler.add_source("s", deliver_to(publisher, metrics), seed=0)
    scheduler.start()
    video = QueuedVideo()

    async def on_end(reason: str) -> None:
        pass

    pump = asyncio.create_task(
        pump_video(video, "s", scheduler, publisher, metrics, InputLimits(640, 360), 0, on_end)
    )

    def count(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    try:
        video.put(0)
        await poll(lambda: encoders.held.started == [0], "frame 0 to be encoding")
        video.put(1)
        await poll(lambda: publisher.behind(frame_coming=False), "frame 1 to wait")
        for index in range(2, 6):
            video.put(index)
        await poll(lambda: count("streamvsr_frames_received_total") == 6, "frames 2-5")
        assert count("streamvsr_frames_dropped_total", reason="encoder_behind") == 4
        assert len(steps) == 2  # frames 0 and 1 only
        encoders.held.release()  # frame 0 is encoded: the viewer gets it, the encoder takes 1
        assert (await asyncio.wait_for(first, 5)).frame.timestamp == 0
        await poll(lambda: encoders.held.started == [0, 1], "frame 1 to be encoding")
        encoders.held.release()
        assert (await asyncio.wait_for(viewer.recv(), 5)).frame.timestamp == 1
        video.put(6)
        await poll(lambda: encoders.held.started == [0, 1, 6], "frame 6 to be encoding")
        assert len(steps) == 3
        assert count("streamvsr_frames_dropped_total", reason="encoder_busy") == 0
    finally:
        encoders.held.release()
        pump.cancel()
        publisher.stop()
        scheduler.stop()


async def test_an_egress_track_is_behind_while_busy_with_its_next_frame_on_the_way() -> None:
    output = UpscaledTrack()
    frame = av.VideoFrame(8, 8, "rgb24")
    assert not output.behind(frame_coming=True)  # no reader has taken a frame yet
    output.put(frame, time.monotonic())
    assert await output.recv() is frame  # the reader works on it now
    assert not output.behind(frame_coming=False)
    assert output.behind(frame_coming=True)
    output.put(av.VideoFrame(8, 8, "rgb24"), time.monotonic())
    assert output.behind(frame_coming=False)
    await output.recv()
    asking = asyncio.create_task(output.recv())  # done: it asks for the next one
    await asyncio.sleep(0)
    assert not output.behind(frame_coming=True)
    output.stop()
    await asyncio.gather(asking, return_exceptions=True)
