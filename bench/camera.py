"""A synthetic webcam for aiortc peers: frames drawn on demand, sent at a steady rate."""

from __future__ import annotations

import asyncio
import fractions
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
