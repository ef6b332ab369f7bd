"""Encode once per stream: viewers share their stream's encoder, each starting at a keyframe;
keyframe requests are rate-limited; the bitrate follows the most constrained viewer."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque

import av
import numpy as np
from aiortc import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from support.webrtc import (
    SineAudio,
    SyntheticVideo,
    client_pc,
    identify,
    running_server,
    value,
    viewer_offer,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server.encoders import Encoders
from streamvsr.server.metrics import Metrics
from streamvsr.server.publisher import Publisher
from streamvsr.server.stream_encoding import (
    KEYFRAME_INTERVAL_S,
    RAISE_INTERVAL_S,
    VIEWER_DEPTH,
    StreamEncoder,
    ViewerTrack,
    is_keyframe,
)

SDP = {"Content-Type": "application/sdp"}
IDR, SLICE = 0x65, 0x41  # H.264 NAL headers: an IDR slice, a non-IDR slice


class FakeEncoder:
    """aiortc's encoder interface: a one-payload H.264 frame, an IDR when forced (or first)."""

    def __init__(self) -> None:
        self.target_bitrate = 4_000_000
        self.forced: list[bool] = []

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False):
        key = force_keyframe or not self.forced
        self.forced.append(force_keyframe)
        return [bytes([IDR if key else SLICE, 0])], frame.pts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frame(pts: int) -> av.VideoFrame:
    out = av.VideoFrame(16, 16, "rgb24")
    out.pts, out.time_base = pts, fractions.Fraction(1, 90000)
    return out


def shared(clock: Clock, fixed: int = 0) -> tuple[StreamEncoder, FakeEncoder, Metrics]:
    inner, metrics = FakeEncoder(), Metrics()
    encoder = StreamEncoder("video/h264", inner, metrics, 1_000_000, 8_000_000, fixed, clock)
    return encoder, inner, metrics


def viewer_of(encoder: StreamEncoder, metrics: Metrics) -> ViewerTrack:
    def join(track: ViewerTrack, mime: str) -> StreamEncoder:
        encoder.join(track)
        return encoder

    track = ViewerTrack("video", join, metrics)
    track.use("video/H264")
    return track


async def encoded(encoder: StreamEncoder, pts: int) -> None:
    """Put a frame and wait until it is encoded and its viewers' senders took it."""
    count = len(encoder._encoder.forced)
    encoder.put(frame(pts), time.monotonic())
    while len(encoder._encoder.forced) == count or encoder.behind(False) or encoder._encoding:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.005)


class Sender:
    """Reads a viewer's track as its aiortc sender does once its connection is up, keeping the
    timestamps; after ``limit`` frames it stops reading (a stalled connection)."""

    def __init__(self, track: ViewerTrack, limit: int | None = None):
        self.got: list[int] = []
        self.task = asyncio.ensure_future(self._read(track, limit))

    async def _read(self, track: ViewerTrack, limit: int | None) -> None:
        while limit is None or len(self.got) < limit:
            self.got.append((await track.recv()).frame.timestamp)


async def reading(track: ViewerTrack, limit: int | None = None) -> Sender:
    sender = Sender(track, limit)
    await asyncio.sleep(0)  # it asks for its first frame
    return sender


def test_keyframes_are_found_in_h264_and_vp8_payloads() -> None:
    stap_a = bytes([24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE, 0, 2, 0x65, 0x88])  # SPS PPS IDR
    assert is_keyframe("video/h264", [stap_a])
    assert is_keyframe("video/h264", [bytes([28, 0x85, 0])])  # FU-A, start of an IDR
    assert not is_keyframe("video/h264", [bytes([28, 0x81, 0]), bytes([SLICE, 0])])
    assert is_keyframe("video/vp8", [bytes([0x10, 0x00, 0x9D])])  # frame tag P bit 0
    assert not is_keyframe("video/vp8", [bytes([0x10, 0x01, 0x9D])])
    assert not is_keyframe("video/h264", [])


async def test_a_viewer_starts_at_a_keyframe_and_requests_are_rate_limited() -> None:
    clock = Clock()
    encoder, inner, metrics = shared(clock)
    first = await reading(viewer_of(encoder, metrics))  # connected: it asks for a keyframe
    await encoded(encoder, 0)
    await encoded(encoder, 1)
    assert inner.forced == [True, False]
    assert first.got == [0, 1]

    clock.now += 0.2
    late_track = viewer_of(encoder, metrics)
    await encoded(encoder, 2)  # it is still connecting: nothing for it, and no request
    assert inner.forced[-1] is False
    late = await reading(late_track)  # connected: asks for a keyframe, too soon after the last
    for _ in range(5):
        late_track.request_keyframe()  # a PLI storm changes nothing
    await encoded(encoder, 3)
    assert inner.forced[-1] is False and late.got == []  # it waits for a keyframe
    clock.now += KEYFRAME_INTERVAL_S
    await encoded(encoder, 4)
    await encoded(encoder, 5)
    assert inner.forced[3:] == [False, True, False]  # one forced keyframe, once allowed
    assert late.got == [4, 5]
    assert first.got == [0, 1, 2, 3, 4, 5]  # the first viewer got every frame
    assert late_track._queue == deque()  # nothing from before it connected was kept


async def test_a_viewer_that_falls_behind_drops_and_restarts_at_a_keyframe() -> None:
    clock = Clock()
    encoder, inner, metrics = shared(clock)
    slow_track = viewer_of(encoder, metrics)
    slow, fast = await reading(slow_track, limit=1), await reading(viewer_of(encoder, metrics))
    for pts in range(VIEWER_DEPTH + 1):  # the slow one takes frame 0, then queues the rest
        await encoded(encoder, pts)
    clock.now += KEYFRAME_INTERVAL_S
    await encoded(encoder, VIEWER_DEPTH + 1)  # its queue is full: it drops it and starts over
    dropped = metrics.registry.get_sample_value(
        "streamvsr_frames_dropped_total", {"reason": "viewer_behind"}
    )
    assert dropped == VIEWER_DEPTH
    await encoded(encoder, VIEWER_DEPTH + 2)  # the keyframe it asked for
    assert inner.forced[-1] is True
    assert slow.got == [0]
    assert (await slow_track.recv()).frame.timestamp == VIEWER_DEPTH + 2
    assert fast.got == list(range(VIEWER_DEPTH + 3))  # the other viewer got every frame


async def test_the_bitrate_follows_the_most_constrained_viewer() -> None:
    clock = Clock()
    encoder, inner, metrics = shared(clock)
    good, poor = viewer_of(encoder, metrics), viewer_of(encoder, metrics)
    good.report_bitrate(20_000_000)
    assert inner.target_bitrate == 8_000_000  # the only estimate, within max_bitrate
    good.report_bitrate(6_000_000)
    assert inner.target_bitrate == 6_000_000
    poor.report_bitrate(2_000_000)
    assert inner.target_bitrate == 2_000_000  # decreases at once
    poor.report_bitrate(100_000)
    assert inner.target_bitrate == 1_000_000  # never below min_bitrate
    encoder.leave(poor)
    assert inner.target_bitrate == 1_000_000  # the raise is held back
    clock.now += RAISE_INTERVAL_S
    encoder.bitrate_changed()
    assert inner.target_bitrate == 6_000_000

    fixed, fixed_inner, _ = shared(clock, fixed=3_000_000)
    assert fixed_inner.target_bitrate == 3_000_000
    viewer_of(fixed, metrics).report_bitrate(500_000)
    assert fixed_inner.target_bitrate == 3_000_000


async def test_a_viewers_pli_reaches_its_streams_encoder() -> None:
    """aiortc's sender hands a received PLI to its track (streamvsr.startup)."""
    async with running_server(BicubicEngine("cpu")):  # installs the server's aiortc changes
        clock = Clock()
        encoder, inner, metrics = shared(clock)
        viewer = viewer_of(encoder, metrics)
        await encoded(encoder, 0)  # the encoder's first frame: no keyframe asked for
        pc = client_pc()
        sender = pc.addTransceiver(viewer, direction="sendonly").sender
        assert isinstance(sender, RTCRtpSender)
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc)
        await sender._handle_rtcp_packet(pli)
        await encoded(encoder, 1)
        assert inner.forced == [False, True]
        await pc.close()


async def test_viewers_share_one_encode_and_decode_identical_frames() -> None:
    """Three viewers, and a fourth that joins later: the server encodes each frame once, and
    every viewer decodes the same images (the late one from a keyframe, soon after joining)."""
    video = SyntheticVideo()
    async with running_server(BicubicEngine("cpu")) as server:
        http = server.http
        publisher = client_pc()
        publisher.addTransceiver(video, direction="sendonly")
        publisher.addTransceiver(SineAudio(), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        async with http.post("/whip/cam", data=publisher.localDescription.sdp, headers=SDP) as r:
            assert r.status == 201
            await publisher.setRemoteDescription(_answer(await r.text()))
        viewers = []
        try:
            for n in range(4):
                if n == 3:
                    await viewers[0][1].wait_video(20)
                pc, collector, offer = await viewer_offer()
                async with http.post("/whep/cam", data=offer, headers=SDP) as r:
                    assert r.status == 201
                    await pc.setRemoteDescription(_answer(await r.text()))
                viewers.append((pc, collector, time.monotonic()))
            late_joined = viewers[3][2]
            await viewers[3][1].wait_video(1, timeout=KEYFRAME_INTERVAL_S + 2)
            assert viewers[3][1].video[0].at - late_joined < KEYFRAME_INTERVAL_S + 1.5
            before = await server.scrape()
            await asyncio.sleep(1.5)
            after = await server.scrape()
            for _, collector, _ in viewers:
                await collector.wait_video(len(collector.video) + 1)
        finally:
            for pc, collector, _ in viewers:
                await pc.close()
                await collector.stop()
            await publisher.close()

    def delta(name: str) -> float:
        return value(after, name) - value(before, name)

    encodes = delta("streamvsr_frame_latency_seconds_count")  # frames taken by stream encoders
    assert 0 < encodes <= delta("streamvsr_frames_received_total") + 1
    assert delta("streamvsr_frames_sent_total") >= 3.5 * encodes  # each encode to four viewers

    images: dict[int, list[np.ndarray]] = {}
    for _, collector, _ in viewers:
        assert collector.video, "a viewer got no video"
        for received in collector.video:
            index, difference = identify(received.image, video)
            assert difference < 8
            images.setdefault(index, []).append(received.image)
    shared_frames = [same for same in images.values() if len(same) == 4]
    assert len(shared_frames) >= 10
    for same in shared_frames:
        assert all(np.array_equal(same[0], other) for other in same[1:])


def _answer(sdp: str):
    from aiortc import RTCSessionDescription

    return RTCSessionDescription(sdp, "answer")


def test_the_server_default_encoders_make_a_stream_encoder() -> None:
    encoder = Encoders().for_stream("video/vp8", Metrics())
    assert encoder.mime == "video/vp8" and not encoder.viewers
    publisher = Publisher(Metrics())
    [viewer] = publisher.subscribe()
    viewer.use("video/VP8")
    assert [e.mime for e in publisher.outputs] == ["video/vp8"]
    publisher.stop()
