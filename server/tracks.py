"""Media plumbing between aiortc and the GPU worker: the input pump, the upscaled output track."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .metrics import Metrics
from .scheduler import FrameScheduler, Pending, Processed

if TYPE_CHECKING:
    from .publisher import Publisher

log = logging.getLogger(__name__)


# A session's frame size changes at most this often: other sizes are scaled to the current one
# (each new size restarts the engine's temporal state and the encoder: a keyframe).
SIZE_CHANGE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class InputLimits:
    max_width: int
    max_height: int
    max_pixels: int | None = None  # width x height (the output pixel budget over scale squared)


def fit_within(width: int, height: int, limits: InputLimits) -> tuple[int, int]:
    """Largest even size with the same aspect that fits the limits (the size itself if it fits)."""
    scale = min(limits.max_width / width, limits.max_height / height, 1.0)
    if limits.max_pixels is not None:
        scale = min(scale, math.sqrt(limits.max_pixels / (width * height)))
    if scale == 1.0:
        return width, height
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class SessionSize:
    """The size a session's frames go to the engine at: the first frame's (fitted), then a new
    size at most ``interval`` seconds after the last change, so that a sender changing size every
    frame costs a rescale, not a new engine state and encoder per frame."""

    def __init__(self, limits: InputLimits, interval: float = SIZE_CHANGE_INTERVAL_S):
        self.limits = limits
        self.interval = interval
        self.size: tuple[int, int] | None = None
        self._changed_at = -math.inf

    def target(self, width: int, height: int, now: float) -> tuple[int, int]:
        fitted = fit_within(width, height, self.limits)
        if self.size is None:
            self.size = fitted
        elif fitted != self.size and now - self._changed_at >= self.interval:
            self.size, self._changed_at = fitted, now
        return self.size


class UpscaledTrack(MediaStreamTrack):
    """Raw upscaled video for a subscriber that encodes it its own way (an egress): the newest
    frame (a one-frame mailbox).

    Its reader takes a frame, works on it, then asks for the next one; until it asks again it is
    busy (``behind`` tells the input pump).
    """

    kind = "video"

    def __init__(self):
        super().__init__()
        self._frame: av.VideoFrame | None = None
        self._ready = asyncio.Event()
        self._busy = False  # the reader took a frame and has not asked for the next yet

    def behind(self, frame_coming: bool) -> bool:
        """Whether its reader is busy and its next frame is already here (or ``frame_coming``
        from the engine): a frame upscaled now would only replace that one."""
        return self._busy and (self._frame is not None or frame_coming)

    def put(self, frame: av.VideoFrame, received_at: float) -> None:
        frame.opaque = received_at  # the input frame's arrival, for the reader's clock
        self._frame = frame
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        self._busy = False  # the reader is done with its last frame
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        self._busy = True
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv() so that it ends


def deliver_to(publisher: Publisher, metrics: Metrics) -> Callable[[Processed], Callable[[], None]]:
    """The scheduler's callback for one session, run in its worker thread: makes the HR frame
    there (megapixels of copying stay off the event loop) and returns what hands it, on the
    event loop, to each of the publisher's outputs (the stream's encoder per codec, whose viewers
    share it; each egress). An output added in between gets the next frame."""

    def deliver(result: Processed) -> Callable[[], None]:
        # One frame for all: outputs only read its pixels; an H.264 encoder sets its picture
        # type, which only that codec's one encoder of the stream reads.
        frame = _video_frame(result.frame.numpy(), result)

        def hand_over() -> None:
            metrics.queue_wait.observe(result.queue_wait)
            for output in publisher.outputs:
                output.put(frame, result.received_at)

        return hand_over

    return deliver


def _video_frame(pixels: np.ndarray, result: Processed) -> av.VideoFrame:
    height, width = pixels.shape[:2]
    frame = av.VideoFrame(width, height, result.pixel_format.value)
    if result.pixel_format.value == "rgb24" and frame.planes[0].line_size == width * 3:
        # One memcpy: ~5x faster than from_ndarray's row copies, which hold the GIL (~20 ms at
        # 2560x1440). Only where the plane has no row padding.
        frame.planes[0].update(np.ascontiguousarray(pixels))
    else:
        frame = av.VideoFrame.from_ndarray(pixels, format=result.pixel_format.value)
    frame.pts, frame.time_base = result.context  # keep the input frame's timestamp
    return frame


async def pump_video(
    track: MediaStreamTrack,
    key: str,
    scheduler: FrameScheduler,
    publisher: Publisher,
    metrics: Metrics,
    limits: InputLimits,
    idle_timeout: float,
    on_end: Callable[[str], Awaitable[None]],
) -> None:
    """Feed a received video track to the scheduler until it ends or goes quiet.

    A session's output rate is capped at what its encoders keep up with: while each of its
    outputs is still encoding a frame and already has the next one (waiting, or in the engine),
    a received frame is skipped before the engine (dropped as ``encoder_behind``) instead of
    being upscaled only to be replaced unsent. So a session whose encoding is slower than its
    input (1440p x264 on a few cores) sends what its encoders manage, and the engine steps, frame
    conversions and copies that others wait for are spent on those frames only.
    """
    reason = "track ended"
    warned = False
    sizes = SessionSize(limits)
    while True:
        try:
            frame = await asyncio.wait_for(track.recv(), idle_timeout or None)
        except MediaStreamError:
            break
        except asyncio.TimeoutError:
            reason = f"no video for {idle_timeout:g} s"
            break
        metrics.frames_received.inc()
        if publisher.behind(frame_coming=scheduler.in_flight(key)):
            metrics.frames_dropped.labels("encoder_behind").inc()
            continue
        now = time.monotonic()
        # Stamped by the watched decoder: its first RTP packet's arrival (see server.decoding).
        received_at = frame.opaque if isinstance(frame.opaque, float) else now
        width, height = sizes.target(frame.width, frame.height, now)
        if width * height < frame.width * frame.height:
            metrics.frames_downscaled.inc()
            size = (frame.width, frame.height)
            # Not a smaller size kept for a while after a change: the sender is over the limit.
            if fit_within(*size, limits) != size and not warned:
                log.warning(
                    "session %.8s: input %dx%d is over the %dx%d (%s pixel) limit, downscaled "
                    "to %dx%d",
                    key, frame.width, frame.height, limits.max_width, limits.max_height,
                    limits.max_pixels, width, height,
                )  # fmt: skip
                warned = True
        # Converted (and scaled) in the worker, and only if it is not dropped as stale first.
        convert = _converter(frame, width, height)
        context = (frame.pts, frame.time_base)
        scheduler.submit(key, Pending(convert, received_at, context, shape=(height, width)))
    await on_end(reason)


def _converter(frame: av.VideoFrame, width: int, height: int) -> Callable[[], np.ndarray]:
    # A function of its own: a lambda in the loop would see the loop's latest frame.
    return lambda: frame.to_ndarray(format="rgb24", width=width, height=height)
