"""Media plumbing between aiortc and the GPU worker: the input pump, the upscaled output track."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .metrics import Metrics
from .scheduler import FrameScheduler, Pending, Processed

if TYPE_CHECKING:
    from .publisher import Publisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputLimits:
    max_width: int
    max_height: int


def fit_within(width: int, height: int, limits: InputLimits) -> tuple[int, int]:
    """Largest even size with the same aspect that fits the limits (the size itself if it fits)."""
    scale = min(limits.max_width / width, limits.max_height / height, 1.0)
    if scale == 1.0:
        return width, height
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class UpscaledTrack(MediaStreamTrack):
    """Outgoing video: the newest upscaled frame of a session (a one-frame mailbox)."""

    kind = "video"

    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics
        self._frame: av.VideoFrame | None = None
        self._received_at = 0.0
        self._ready = asyncio.Event()
        self._consumed = False

    def put(self, frame: av.VideoFrame, received_at: float) -> None:
        if self._frame is not None and self._consumed:
            self._metrics.frames_dropped.labels("encoder_busy").inc()
        self._frame, self._received_at = frame, received_at
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        self._consumed = True
        self._metrics.frames_sent.inc()
        self._metrics.frame_latency.observe(time.monotonic() - self._received_at)
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv() so that it ends


def deliver_to(publisher: Publisher, metrics: Metrics) -> Callable[[Processed], None]:
    """The scheduler's callback for one session: hand the HR frame to each of the publisher's
    current output tracks (the browser's own; one per WHEP viewer of a WHIP stream)."""

    def deliver(result: Processed) -> None:
        metrics.queue_wait.observe(result.queue_wait)
        pixels = result.frame.numpy()
        for track in publisher.outputs:
            # A frame each: encoders run in threads and set fields on the frame they encode.
            frame = av.VideoFrame.from_ndarray(pixels, format=result.pixel_format.value)
            frame.pts, frame.time_base = result.context  # keep the input frame's timestamp
            track.put(frame, result.received_at)

    return deliver


async def pump_video(
    track: MediaStreamTrack,
    key: str,
    scheduler: FrameScheduler,
    metrics: Metrics,
    limits: InputLimits,
    idle_timeout: float,
    on_end: Callable[[str], Awaitable[None]],
) -> None:
    """Feed a received video track to the scheduler until it ends or goes quiet."""
    reason = "track ended"
    warned = False
    while True:
        try:
            frame = await asyncio.wait_for(track.recv(), idle_timeout or None)
        except MediaStreamError:
            break
        except asyncio.TimeoutError:
            reason = f"no video for {idle_timeout:g} s"
            break
        metrics.frames_received.inc()
        received_at = time.monotonic()
        try:
            width, height = fit_within(frame.width, frame.height, limits)
            if (width, height) != (frame.width, frame.height):
                metrics.frames_downscaled.inc()
                if not warned:
                    log.warning(
                        "session %s: input %dx%d is over the %dx%d limit, downscaled to %dx%d",
                        key, frame.width, frame.height, limits.max_width, limits.max_height,
                        width, height,
                    )  # fmt: skip
                    warned = True
            rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
        except Exception:  # a broken frame must not end the stream (aiortc would hide it)
            log.exception("session %s: could not convert a received frame", key)
            metrics.frames_dropped.labels("decode_error").inc()
            continue
        scheduler.submit(key, Pending(rgb, received_at, (frame.pts, frame.time_base)))
    await on_end(reason)
