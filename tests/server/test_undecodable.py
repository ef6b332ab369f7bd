"""Frames that cannot be decoded until a publisher's next keyframe, as from OBS: counted in
``streamvsr_undecodable_frames_total`` and logged once a period, not once a frame."""

from __future__ import annotations

import asyncio
import fractions
import logging
import time

import av
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from support.webrtc import client_pc, h264_baseline, pattern, running_server, value, wait_until

from streamvsr.engine import BicubicEngine
from streamvsr.server.decoding import AIORTC_DECODE_WARNING, WatchedDecoder

pytestmark = pytest.mark.usefixtures("loopback_ice")

FPS = 30
GOP = 15  # frames from one keyframe to the next
DECODING_LOG = "streamvsr.server.decoding"


class KeyframeLostVideo(MediaStreamTrack):
    """H.264 as OBS sends it after its first keyframe was lost: x264's default (High) profile,
    a keyframe every GOP frames whatever the receiver asks for, and the stream starts at frame 1.
    Yields encoded packets, which aiortc sends as they are."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.codec = av.CodecContext.create("libx264", "w")
        self.codec.width, self.codec.height, self.codec.pix_fmt = 64, 48, "yuv420p"
        self.codec.time_base = fractions.Fraction(1, FPS)
        self.codec.options = {
            "tune": "zerolatency",
            "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0",
        }
        self.index = 0
        self.start = time.monotonic()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = self._encode()
        if self.index == 1:  # the first keyframe: lost
            packet = self._encode()
        await asyncio.sleep(max(0.0, self.start + self.index / FPS - time.monotonic()))
        return packet

    def _encode(self) -> av.Packet:
        frame = av.VideoFrame.from_ndarray(pattern(self.index), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = self.index, self.codec.time_base
        self.index += 1
        [packet] = self.codec.encode(frame)
        return packet


async def test_frames_before_the_first_keyframe_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_server(BicubicEngine("cpu")) as server:
        before = value(await server.scrape(), "streamvsr_undecodable_frames_total")
        pc = client_pc()
        pc.addTransceiver(KeyframeLostVideo(), direction="sendonly").setCodecPreferences(
            [h264_baseline()]
        )
        try:
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Content-Type": "application/sdp"}
            async with server.http.post(
                "/whip/obs", data=pc.localDescription.sdp, headers=headers
            ) as response:
                answer = await response.text()
                assert response.status == 201, answer
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

            async def decoded() -> list:
                samples = await server.scrape()
                received = value(samples, "streamvsr_frames_received_total")
                return samples if received >= 10 else []

            samples = await wait_until(decoded, 10, "frames from the second keyframe on")
        finally:
            await pc.close()

    undecodable = value(samples, "streamvsr_undecodable_frames_total") - before
    assert GOP // 2 <= undecodable <= GOP - 1, undecodable
    ours = [r for r in caplog.records if r.name == DECODING_LOG]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    assert "waiting for a keyframe" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.msg == AIORTC_DECODE_WARNING]


class FailingDecoder:
    def __init__(self) -> None:
        self.fail = True

    def decode(self, encoded_frame):
        if self.fail:
            raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
        return ["frame"]


def test_failures_are_counted_and_summed_up_once_a_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, DECODING_LOG)
    now = [0.0]
    counted = []
    inner = FailingDecoder()
    decoder = WatchedDecoder(inner, "H264", lambda: counted.append(1), 10.0, lambda: now[0])

    def decode_at(t: float):
        now[0] = t
        return decoder.decode(None)

    for t in range(5):  # the first is logged, four more within the period are not
        with pytest.raises(av.FFmpegError):
            decode_at(t)
    assert len(counted) == 5 and len(caplog.records) == 1
    inner.fail = False
    assert decode_at(6) == ["frame"]  # a keyframe: still within the period, nothing logged
    assert len(caplog.records) == 1
    assert decode_at(10) == ["frame"]  # the period is over: one line sums up the other four
    assert [r.getMessage() for r in caplog.records][1] == (
        "aiortc dropped 4 undecodable H264 frames in the last 10 s (waiting for a keyframe)"
    )
    decode_at(30)  # nothing left to sum up
    inner.fail = True
    with pytest.raises(av.FFmpegError):
        decode_at(31)  # a new period: logged with its error
    assert len(counted) == 6 and len(caplog.records) == 3
    assert "Invalid data" in caplog.records[2].getMessage()
