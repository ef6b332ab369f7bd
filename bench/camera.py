"""A synthetic webcam for aiortc peers: frames drawn on demand, sent at a steady rate."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_CLOCK = 90_000  # RTP video timestamps tick at 90 kHz
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)


class PacedCamera(MediaStreamTrack):
    """A paced video source: its k-th frame shows ``make_frame(first + k)`` (uint8 RGB), due k / fps
    seconds after the first, with pts k * 90000 / fps.

    With ``keep_sent``, ``sent[first + k]`` records (monotonic time handed to the encoder, image).
    ``pause()`` stops the source (no more frames: a peer that goes quiet) without closing anything.
    """

    kind = "video"

    def __init__(
        self,
        make_frame: Callable[[int], np.ndarray],
        fps: float = 30,
        first: int = 0,
        keep_sent: bool = False,
    ):
        super().__init__()
        self.make_frame = make_frame
        self.fps = fps
        self.first = first
        self.keep_sent = keep_sent
        self.count = 0
        self.sent: dict[int, tuple[float, np.ndarray]] = {}
        self._start: float | None = None
        self._resume = asyncio.Event()
        self._resume.set()

    def pause(self) -> None:
        self._resume.clear()

    async def recv(self) -> av.VideoFrame:
        await self._resume.wait()
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.count / self.fps - time.monotonic()))
        image = self.make_frame(self.first + self.count)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self.count * VIDEO_CLOCK / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        if self.keep_sent:
            self.sent[self.first + self.count] = (time.monotonic(), image)
        self.count += 1
        return frame


class SineAudio(MediaStreamTrack):
    """A paced 48 kHz stereo s16 sine in 20 ms frames."""

    kind = "audio"
    RATE = 48000
    SAMPLES = 960

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3):
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self.count = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.count * self.SAMPLES / self.RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (self.count * self.SAMPLES + np.arange(self.SAMPLES)) / self.RATE
        mono = (self.amplitude * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = self.RATE
        frame.pts = self.count * self.SAMPLES
        frame.time_base = fractions.Fraction(1, self.RATE)
        self.count += 1
        return frame
