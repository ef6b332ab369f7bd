"""Frame latency starts when a frame's first RTP packet arrives, not when our consumer gets the
decoded frame: aiortc's jitter buffer (which completes a frame when the next one's first packet
arrives), its decoder queue and the decoding are part of what viewers wait."""

from __future__ import annotations

import fractions
import time

import av
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from support.webrtc import SyntheticVideo, open_browser_peer, running_server, value

from streamvsr.engine import BicubicEngine
from streamvsr.server import decoding
from streamvsr.server.decoding import WatchedDecoder, stamping_arrivals

FPS = 5  # the jitter buffer holds each frame ~1/FPS: until the next frame's first packet
DECODE_S = 0.1  # a slow decoder (every decoder in this process, the server's and the client's)


class SlowDecoder:
    def __init__(self, inner) -> None:
        self.inner = inner

    def decode(self, encoded_frame):
        time.sleep(DECODE_S)
        return self.inner.decode(encoded_frame)


def bucket(samples, name: str, le: float) -> float:
    return value(samples, f"{name}_bucket", le=str(le))


async def test_latency_includes_the_jitter_buffer_and_the_decoder(monkeypatch) -> None:
    original = decoding.aiortc_get_decoder
    monkeypatch.setattr(decoding, "aiortc_get_decoder", lambda codec: SlowDecoder(original(codec)))
    async with running_server(BicubicEngine("cpu")) as server:
        peer = await open_browser_peer(server.http, SyntheticVideo(fps=FPS), keep_images=False)
        try:
            await peer.collector.wait_video(8, timeout=20)
            samples = await server.scrape()
        finally:
            await peer.close()

    for name in ("streamvsr_frame_latency_seconds", "streamvsr_frame_encoded_latency_seconds"):
        count = value(samples, f"{name}_count")
        assert count >= 8, (name, count)
        # Every frame spent DECODE_S in the decoder before our consumer got it.
        assert bucket(samples, name, DECODE_S) == 0, name
        # And about a frame interval in the jitter buffer before that (from its first packet).
        mean = value(samples, f"{name}_sum") / count
        assert mean > DECODE_S + 0.5 / FPS, (name, mean)


class ReorderingDecoder:
    """Returns each frame one call late, as a decoder of B-frames does."""

    def __init__(self) -> None:
        self.held: list[av.VideoFrame] = []

    def decode(self, encoded_frame: JitterFrame) -> list[av.VideoFrame]:
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts, frame.time_base = encoded_frame.timestamp, fractions.Fraction(1, 90000)
        self.held.append(frame)
        return [self.held.pop(0)] if len(self.held) > 1 else []


def test_decoded_frames_carry_the_arrival_of_their_encoded_frame() -> None:
    decoder = WatchedDecoder(ReorderingDecoder(), "H264", lambda: None)
    first, second = JitterFrame(b"", timestamp=0), JitterFrame(b"", timestamp=3000)
    first.arrived_at, second.arrived_at = 10.0, 10.2
    assert decoder.decode(first) == []
    [frame] = decoder.decode(second)
    assert (frame.pts, frame.opaque) == (0, 10.0)  # the first frame's, found by its pts
    before = time.monotonic()
    [frame] = decoder.decode(JitterFrame(b"", timestamp=6000))  # unstamped
    assert (frame.pts, frame.opaque) == (3000, 10.2)
    [frame] = decoder.decode(JitterFrame(b"", timestamp=9000))
    assert before <= frame.opaque <= time.monotonic()  # unstamped: when it reached the decoder


def packet(sequence_number: int, timestamp: int) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=sequence_number, timestamp=timestamp)
    packet._data = b"\x00"  # what aiortc's receiver depayloads into
    return packet


def test_the_jitter_buffer_stamps_a_frame_with_its_first_packet_arrival(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(decoding.time, "monotonic", lambda: now[0])
    add = stamping_arrivals(getattr(JitterBuffer.add, "unpatched", JitterBuffer.add))
    buffer = JitterBuffer(capacity=128, is_video=True)
    for t, (seq, ts) in ((1.0, (0, 3000)), (1.01, (1, 3000)), (1.2, (2, 6000))):
        now[0] = t
        _, frame = add(buffer, packet(seq, ts))
    # The first frame is complete when the second one's first packet arrives, at 1.2.
    assert (frame.timestamp, frame.arrived_at) == (3000, 1.0)
