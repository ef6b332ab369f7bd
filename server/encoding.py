"""Outgoing video encoders suited to upscaled video, timed for metrics.

aiortc caps H264 at 3 Mbps (VP8 at 1.5 Mbps) and runs x264 with its slow default preset: fine for a
webcam, too little and too slow for 720p-1440p output. ``install`` makes every RTCRtpSender use
encoders with our caps and preset (aiortc has no setting for this, so its factory is replaced).
"""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
from aiortc import rtcrtpsender
from aiortc.codecs import get_encoder as aiortc_get_encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

FRAME_RATE = 30


@dataclass(frozen=True)
class EncoderSettings:
    x264_preset: str = "veryfast"
    min_bitrate: int = 1_000_000
    start_bitrate: int = 4_000_000
    max_bitrate: int = 12_000_000


def h264_level(width: int, height: int) -> str:
    """Lowest H.264 level whose frame size limit fits (at 30 fps)."""
    macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
    for level, limit in (("3.1", 3600), ("4.0", 8192), ("5.0", 22080), ("5.1", 36864)):
        if macroblocks <= limit:
            return level
    return "5.2"


class _BitrateCaps:
    """Target bitrate clamped to our caps (replaces aiortc's fixed ones)."""

    settings: EncoderSettings

    @property
    def target_bitrate(self) -> int:
        return self._bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._bitrate = max(self.settings.min_bitrate, min(bitrate, self.settings.max_bitrate))


class TunedH264Encoder(_BitrateCaps, H264Encoder):
    def __init__(self, settings: EncoderSettings):
        self.settings = settings
        super().__init__()
        self._bitrate = settings.start_bitrate

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        codec = self.codec
        if codec is not None and (
            (frame.width, frame.height) != (codec.width, codec.height)
            or abs(self.target_bitrate - codec.bit_rate) > 0.1 * codec.bit_rate
        ):
            self.codec = None  # size or bitrate changed: start a new stream (with a keyframe)
        frame.pict_type = (
            av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        )
        if self.codec is None:
            self.codec = self._open(frame.width, frame.height)
        data = b"".join(bytes(packet) for packet in self.codec.encode(frame))
        if data:
            yield from self._split_bitstream(data)

    def _open(self, width: int, height: int):
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = self.target_bitrate
        codec.pix_fmt = "yuv420p"
        codec.framerate = fractions.Fraction(FRAME_RATE, 1)
        codec.time_base = fractions.Fraction(1, FRAME_RATE)
        codec.profile = "Baseline"  # what WebRTC peers negotiate (42e01f)
        codec.options = {
            "preset": self.settings.x264_preset,
            "tune": "zerolatency",
            "level": h264_level(width, height),
            # VBV: keep the rate near the target so that packets do not burst.
            "maxrate": str(self.target_bitrate),
            "bufsize": str(self.target_bitrate),
        }
        return codec


class TunedVp8Encoder(_BitrateCaps, Vp8Encoder):
    def __init__(self, settings: EncoderSettings):
        self.settings = settings
        super().__init__()
        self._bitrate = settings.start_bitrate


class TimedEncoder:
    """Wraps an encoder and reports the seconds each ``encode`` takes (runs in a thread)."""

    def __init__(self, inner, observe: Callable[[float], None]):
        self._inner = inner
        self._observe = observe

    def encode(self, frame, force_keyframe: bool = False):
        start = time.perf_counter()
        try:
            return self._inner.encode(frame, force_keyframe)
        finally:
            self._observe(time.perf_counter() - start)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)


def install(settings: EncoderSettings, observe: Callable[[str, float], None]) -> None:
    """Make aiortc's senders use the tuned encoders, reporting (codec, seconds) per frame."""

    def get_encoder(codec):
        mime = codec.mimeType.lower()
        if mime == "video/h264":
            encoder = TunedH264Encoder(settings)
        elif mime == "video/vp8":
            encoder = TunedVp8Encoder(settings)
        else:
            return aiortc_get_encoder(codec)
        name = mime.split("/")[1]
        return TimedEncoder(encoder, lambda seconds: observe(name, seconds))

    rtcrtpsender.get_encoder = get_encoder
