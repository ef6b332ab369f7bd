"""Encoder cost of the serving path: ms per frame of the server's H.264 and VP8 encoders.

Each encoder is timed on RGB frames (what CPU engines hand over: the encoder converts) and on YUV
4:2:0 frames (what GPU engines hand over), and H.264 on NVENC too where it opens.
"""

from __future__ import annotations

import fractions
import time
from dataclasses import replace
from typing import Any

import av
import numpy as np

from streamvsr.server.encoders import (
    NVENC,
    X264,
    EncoderSettings,
    TunedH264Encoder,
    TunedVp8Encoder,
    nvenc_unavailable,
)

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440)}


def textured_frames(
    width: int, height: int, count: int, pixel_format: str = "rgb24"
) -> list[av.VideoFrame]:
    """Moving textured RGB frames, like upscaled video (noise would be unfairly hard to encode)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    texture = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    frames = []
    for n in range(count):
        frame = av.VideoFrame.from_ndarray(np.roll(texture, 4 * n, axis=1), format="rgb24")
        if pixel_format != "rgb24":
            frame = frame.reformat(format=pixel_format)
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90_000)
        frames.append(frame)
    return frames


def _encoder(codec: str, settings: EncoderSettings):
    if codec == "vp8":
        return TunedVp8Encoder(settings)
    return TunedH264Encoder(replace(settings, h264_codec=NVENC if codec == "nvenc" else X264))


def measure(
    codec: str, size: str, frames: int, settings: EncoderSettings, pixel_format: str = "rgb24"
) -> dict[str, Any]:
    width, height = SIZES[size]
    encoder = _encoder(codec, settings)
    times, sizes = [], []
    for n, frame in enumerate(textured_frames(width, height, frames, pixel_format)):
        start = time.perf_counter()
        payloads, _ = encoder.encode(frame, force_keyframe=n == 0)
        times.append(time.perf_counter() - start)
        sizes.append(sum(len(p) for p in payloads))
    steady = times[1:] or times  # the first frame opens the codec
    return {
        "codec": codec,
        "size": size,
        "input": pixel_format,
        "preset": settings.x264_preset if codec == "h264" else None,
        "ms_per_frame": round(1e3 * float(np.mean(steady)), 2),
        "p95_ms": round(1e3 * float(np.percentile(steady, 95)), 2),
        "kbit_per_frame": round(8 * sum(sizes) / len(sizes) / 1e3, 1),
    }


def run(codecs=None, sizes=tuple(SIZES), frames: int = 30,
        preset: str = "veryfast") -> list[dict[str, Any]]:  # fmt: skip
    """Every codec (h264 = x264, nvenc when it opens, vp8) x size x input pixel format."""
    if codecs is None:
        codecs = ("h264", "vp8") if nvenc_unavailable() else ("h264", "nvenc", "vp8")
    settings = EncoderSettings(x264_preset=preset)
    return [
        measure(c, s, frames, settings, f)
        for c in codecs
        for s in sizes
        for f in ("rgb24", "yuv420p")
    ]


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'codec':>6} {'size':>6} {'input':>8} {'preset':>9} {'ms/frame':>9} {'p95 ms':>7}"]
    for r in results:
        lines.append(
            f"{r['codec']:>6} {r['size']:>6} {r['input']:>8} {r['preset'] or '-':>9} "
            f"{r['ms_per_frame']:>9.2f} {r['p95_ms']:>7.2f}"
        )
    return "\n".join(lines)
