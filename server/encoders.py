"""Outgoing video encoders suited to upscaled video, timed for metrics.

aiortc caps H264 at 3 Mbps (VP8 at 1.5 Mbps) and runs x264 with its slow default preset: fine for a
webcam, too little and too slow for 720p-1440p output. ``Encoders`` makes encoders with
our caps and preset; aiortc has no setting for this, so ``streamvsr.startup`` installs
``Encoders.for_sender`` in place of aiortc's factory. Viewers of a stream share its encoder
(``stream_encoding``).
H.264 is encoded on the GPU with NVENC (``h264_nvenc``) where it can be opened, else with x264
(``server.h264_encoder``: auto, x264 or nvenc; see ``select_h264_encoder``).
"""

from __future__ import annotations

import fractions
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import av
import av.logging
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_encoder as aiortc_get_encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from .settings import ServerSettings
from .stream_encoding import AudioStreamEncoder, Delivery, SharedEncoder, StreamEncoder

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

FRAME_RATE = 30
X264, NVENC = "libx264", "h264_nvenc"  # FFmpeg encoder names
# A fast NVENC preset (p1 fastest .. p7) tuned for ultra-low latency: no B-frames, no lookahead,
# a packet per frame (delay 0), and a forced keyframe (the peer's PLI) is an IDR, as with x264.
NVENC_OPTIONS = {
    "preset": "p2",
    "tune": "ull",
    "profile": "baseline",
    "rc": "cbr",
    "zerolatency": "1",
    "delay": "0",
    "bf": "0",
    "forced-idr": "1",
}


@dataclass(frozen=True)
class EncoderSettings(ServerSettings):
    """The server's settings (preset, bitrates) and the H.264 encoder chosen for them."""

    h264_codec: str = X264  # X264 or NVENC: what ``select_h264_encoder`` chose

    @classmethod
    def from_server(cls, server: ServerSettings, h264_codec: str) -> EncoderSettings:
        return cls(
            **{f.name: getattr(server, f.name) for f in fields(server)}, h264_codec=h264_codec
        )


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
        return h264_context(
            self.settings.h264_codec, width, height, self.target_bitrate, self.settings.x264_preset,
            x264_threads(width, height, self.settings.encoder_threads),
        )  # fmt: skip


# x264's slices (tune zerolatency) go to its threads: one per this much output. Measured on 2
# cores at veryfast: 1 thread 18 / 33 / 58 ms per 720p / 1080p / 1440p frame, 2 threads 10 / 20 /
# 35 ms. x264 starts two OS threads per thread (measured): its own choice, 1.5
# threads per core, would start 3 OS threads per core for every session's encoder.
PIXELS_PER_X264_THREAD = 960 * 540


def x264_threads(width: int, height: int, most: int) -> int:
    """x264 threads for frames of that size: one per ``PIXELS_PER_X264_THREAD``, at most
    ``most`` and the CPU count (``most`` 0: 0, x264's own choice)."""
    if most == 0:
        return 0
    wanted = math.ceil(width * height / PIXELS_PER_X264_THREAD)
    return max(1, min(wanted, most, os.cpu_count() or 1))


def h264_context(
    name: str, width: int, height: int, bitrate: int, x264_preset: str = "veryfast",
    threads: int = 0,
):  # fmt: skip
    """An unopened H.264 encoder (``X264`` or ``NVENC``) set up for WebRTC: Constrained Baseline,
    low latency, rate held near ``bitrate``, x264 with ``threads`` (0: its choice). It opens on
    its first ``encode``."""
    codec = av.CodecContext.create(name, "w")
    if name == X264:
        codec.thread_count = threads
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.framerate = fractions.Fraction(FRAME_RATE, 1)
    codec.time_base = fractions.Fraction(1, FRAME_RATE)
    codec.profile = "Baseline"  # what WebRTC peers negotiate (42e01f)
    if name == NVENC:
        options = dict(NVENC_OPTIONS)  # NVENC takes its profile from its own option
    else:
        options = {"preset": x264_preset, "tune": "zerolatency"}
    codec.options = {
        **options,
        "level": h264_level(width, height),
        # VBV: keep the rate near the target so that packets do not burst.
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    return codec


def _try_nvenc() -> None:
    """Open NVENC with the serving options and encode one small frame; raises if it cannot."""
    codec = h264_context(NVENC, 256, 144, 1_000_000)
    frame = av.VideoFrame(256, 144, "yuv420p")
    frame.pts = 0
    packets = codec.encode(frame) + codec.encode(None)
    if not any(packet.size for packet in packets):
        raise RuntimeError("it encoded no packet")


@functools.cache
def nvenc_unavailable() -> str | None:
    """Why NVENC cannot be used in this process (None: it can). Probed once, then cached."""
    if NVENC not in av.codecs_available:
        return f"this FFmpeg build has no {NVENC}"
    level = av.logging.get_level()
    try:
        with av.logging.Capture():  # FFmpeg's own words ("Cannot load libcuda.so.1"), unprinted
            av.logging.set_level(av.logging.ERROR)
            _try_nvenc()
    except Exception as exc:  # no GPU, no driver, no NVENC on this GPU, sessions exhausted...
        log_entry = getattr(exc, "log", None)  # PyAV: (level, name, message) of FFmpeg's error
        reason = (log_entry[2].strip() if log_entry else "") or getattr(exc, "strerror", None)
        return f"{NVENC} could not be opened ({reason or exc})"
    finally:
        av.logging.set_level(level)
    return None


def select_h264_encoder(choice: str) -> str:
    """The FFmpeg encoder for ``server.h264_encoder`` (auto, x264 or nvenc), logged with why.

    ``nvenc`` when NVENC cannot be opened raises ``ConfigError``, so that the server does not start.
    """
    if choice == "x264":
        name, why = X264, "server.h264_encoder is x264"
    else:
        unavailable = nvenc_unavailable()
        if unavailable is None:
            name, why = NVENC, f"server.h264_encoder is {choice} and NVENC opened"
        elif choice == "nvenc":
            from streamvsr.config import ConfigError

            raise ConfigError(
                f"server.h264_encoder is nvenc but {unavailable} "
                "(use auto or x264 to encode on the CPU)"
            )
        else:
            name, why = X264, f"server.h264_encoder is auto and {unavailable}"
    log.info("H.264 encoder: %s (%s)", name, why)
    return name


class TunedVp8Encoder(_BitrateCaps, Vp8Encoder):
    def __init__(self, settings: EncoderSettings):
        self.settings = settings
        super().__init__()
        self._bitrate = settings.start_bitrate


class TimedEncoder:
    """Wraps an encoder and reports the seconds each ``encode`` takes (runs in a thread), and for
    frames that carry their input frame's arrival (``time.monotonic()`` of its first RTP packet in
    ``frame.opaque``, set by ``UpscaledTrack``) the seconds from then until encoded."""

    def __init__(
        self,
        inner,
        observe: Callable[[float], None],
        on_latency: Callable[[float], None] = lambda seconds: None,
    ):
        self._inner = inner
        self._observe = observe
        self._on_latency = on_latency

    def encode(self, frame, force_keyframe: bool = False):
        start = time.perf_counter()
        try:
            return self._inner.encode(frame, force_keyframe)
        finally:
            self._observe(time.perf_counter() - start)
            received_at = getattr(frame, "opaque", None)
            if isinstance(received_at, float):
                self._on_latency(time.monotonic() - received_at)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)


class SenderEncoder:
    """What an aiortc video sender is given as its encoder. A viewer's sender gets its frames
    encoded already (``stream_encoding.Delivery``): it passes them through, and its receiver's
    estimates (REMB) go to the viewer. A sender of raw frames (a client peer in this process)
    gets a tuned encoder of its own, made on its first frame."""

    def __init__(self, make: Callable[[], object]):
        self._make = make
        self._inner = None
        self._viewer = None

    def encode(self, frame, force_keyframe: bool = False):
        if self._inner is None:
            self._inner = self._make()
        return self._inner.encode(frame, force_keyframe)

    def pack(self, data):
        if isinstance(data, Delivery):
            self._viewer = data.viewer
            return data.frame.payloads, data.frame.timestamp
        if self._inner is None:
            self._inner = self._make()
        return self._inner.pack(data)

    @property
    def target_bitrate(self) -> int:
        if self._viewer is not None:
            return self._viewer.bitrate or 0
        return getattr(self._inner, "target_bitrate", 0)

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        if self._viewer is not None:
            self._viewer.report_bitrate(bitrate)
        elif self._inner is not None:
            self._inner.target_bitrate = bitrate


class Encoders:
    """The server's encoders. Video ones are tuned (``settings``) and timed: reporting (codec,
    seconds) per frame to ``observe``, and each frame's arrival-to-encoded seconds to
    ``on_latency``.

    ``for_stream`` makes a stream's shared encoder for a codec; ``for_sender`` stands in for
    aiortc's ``get_encoder`` (``streamvsr.startup`` installs it)."""

    def __init__(
        self,
        settings: EncoderSettings | None = None,
        observe: Callable[[str, float], None] = lambda codec, seconds: None,
        on_latency: Callable[[float], None] = lambda seconds: None,
    ):
        self.settings = settings or EncoderSettings()
        self._observe = observe
        self._on_latency = on_latency

    def make(self, mime: str):
        """A tuned, timed encoder for ``mime`` (video/h264 or video/vp8)."""
        name = mime.lower().split("/")[1]
        encoder = (TunedH264Encoder if name == "h264" else TunedVp8Encoder)(self.settings)
        return TimedEncoder(encoder, lambda seconds: self._observe(name, seconds), self._on_latency)

    def for_stream(self, mime: str, metrics: Metrics) -> SharedEncoder:
        """A stream's encoder for ``mime`` (video/h264, video/vp8, audio/opus...)."""
        if mime.startswith("audio/"):
            return AudioStreamEncoder(mime, aiortc_get_encoder(_codec(mime)))
        settings = self.settings
        return StreamEncoder(
            mime, self.make(mime), metrics, settings.min_bitrate, settings.max_bitrate,
            settings.viewer_bitrate,
        )  # fmt: skip

    def for_sender(self, codec):
        mime = codec.mimeType.lower()
        if mime.startswith("audio/"):
            return SenderEncoder(lambda: aiortc_get_encoder(codec))
        return SenderEncoder(lambda: self.make(mime))


def _codec(mime: str) -> RTCRtpCodecParameters:
    """Codec parameters for aiortc's ``get_encoder``, which reads the mime type only."""
    return RTCRtpCodecParameters(mimeType=mime, clockRate=48000 if "opus" in mime else 8000)
