"""Received video that cannot be decoded: counted, and logged once per period instead of per frame.

OBS drops its packets until DTLS is up, so its first keyframe never arrives, and it ignores keyframe
requests: every frame until its next keyframe (x264 in OBS: ~8 s by default) fails to decode, and
aiortc logs a warning for each. ``decoder_factory`` wraps aiortc's decoders to count those frames
and sum them up; ``streamvsr.startup`` installs it in place of aiortc's factory, together with
``without_decode_failures``, which drops aiortc's own per-frame warning.

Decoded video frames also carry when they arrived (``time.monotonic()`` in ``frame.opaque``): the
arrival of their first RTP packet, which ``stamping_arrivals`` (installed by ``streamvsr.startup``
on aiortc's jitter buffer) puts on each encoded frame, else when the frame reached the decoder. The
latency metrics start there, so they include aiortc's jitter buffer (it completes a frame when the
next one's first packet arrives), its decoder queue and the decoding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import av
from aiortc.codecs import get_decoder as aiortc_get_decoder

log = logging.getLogger(__name__)

SUMMARY_PERIOD = 10.0  # seconds between log lines of one receiver's decoder
# FFmpeg's decoders start a thread per core (slices): WebRTC senders send a frame as one slice, so
# those threads would idle, and input is at most 720p, which one thread decodes in a few ms.
DECODER_THREADS = 1
ARRIVALS_KEPT = 64  # arrival times kept for frames not yet complete (or decoded), per stream
AIORTC_DECODE_WARNING = "RTCRtpReceiver(%s) failed to decode %s frame: %s"


class WatchedDecoder:
    """One receiver's decoder (aiortc calls it from that receiver's decoder thread). A frame that
    fails is counted, the first failure of a period is logged with its error and the others of the
    period are summed up in one line once the period is over. The error still reaches aiortc,
    which asks the sender for a keyframe."""

    def __init__(
        self,
        inner,
        codec: str,
        on_undecodable: Callable[[], None],
        period: float = SUMMARY_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._inner = inner
        self._codec = codec
        self._on_undecodable = on_undecodable
        self._period = period
        self._clock = clock
        self._logged_at: float | None = None  # the last failure logged with its error
        self._unlogged = 0  # failures since then
        self._arrivals: dict[int, float] = {}  # pts -> arrival, of frames the decoder holds

    def decode(self, encoded_frame):
        # Stamped by the jitter buffer (stamping_arrivals); else it arrives now, at the decoder.
        arrived_at = getattr(encoded_frame, "arrived_at", None) or time.monotonic()
        try:
            frames = self._inner.decode(encoded_frame)
        except av.FFmpegError as exc:
            self._on_undecodable()
            self._failed(exc)
            raise
        if self._unlogged and self._period_over():
            self._summarise()
        self._stamp(frames, getattr(encoded_frame, "timestamp", None), arrived_at)
        return frames

    def _stamp(self, frames: list, pts: int | None, arrived_at: float) -> None:
        """Each decoded video frame gets its arrival in ``opaque``, found by its pts: a decoder
        that reorders (B-frames) returns a frame of an earlier call."""
        if pts is not None:
            _remember(self._arrivals, pts, arrived_at)
        for frame in frames:
            if isinstance(frame, av.VideoFrame):
                frame.opaque = self._arrivals.pop(frame.pts, arrived_at)

    def _period_over(self) -> bool:
        return self._logged_at is None or self._clock() - self._logged_at >= self._period

    def _failed(self, exc: av.FFmpegError) -> None:
        if not self._period_over():
            self._unlogged += 1
            return
        if self._unlogged:
            self._summarise()
        log.warning(
            "a received %s frame could not be decoded (%s): waiting for a keyframe; "
            "further failures are summed up every %g s",
            self._codec, exc, self._period,
        )  # fmt: skip
        self._logged_at = self._clock()

    def _summarise(self) -> None:
        log.warning(
            "aiortc dropped %d undecodable %s frames in the last %.0f s (waiting for a keyframe)",
            self._unlogged, self._codec, self._clock() - self._logged_at,
        )  # fmt: skip
        self._unlogged = 0


def _remember(arrivals: dict[int, float], timestamp: int, arrived_at: float) -> None:
    """Keep the first arrival of ``timestamp``, and only the latest ``ARRIVALS_KEPT`` (packets of
    frames that were lost or never completed leave theirs behind)."""
    arrivals.setdefault(timestamp, arrived_at)
    if len(arrivals) > ARRIVALS_KEPT:
        del arrivals[next(iter(arrivals))]


def stamping_arrivals(add: Callable) -> Callable:
    """Wraps aiortc's ``JitterBuffer.add(packet)``, which returns an encoded frame once it is
    complete: a video frame gets ``arrived_at``, when the first of its RTP packets arrived (aiortc
    keeps no arrival time), for ``WatchedDecoder`` to hand on."""

    def add_stamped(self, packet):
        if not getattr(self, "_is_video", True):
            return add(self, packet)
        arrivals = vars(self).setdefault("_streamvsr_arrivals", {})
        _remember(arrivals, packet.timestamp, time.monotonic())
        pli_flag, encoded_frame = add(self, packet)
        if encoded_frame is not None:
            encoded_frame.arrived_at = arrivals.pop(encoded_frame.timestamp, None)
        return pli_flag, encoded_frame

    return add_stamped


def decoder_factory(on_undecodable: Callable[[], None]):
    """A stand-in for aiortc's ``get_decoder``: its decoders, watched, calling ``on_undecodable``
    (from decoder threads) for each frame that fails."""

    def get_decoder(codec):
        kind, name = codec.mimeType.split("/")
        decoder = aiortc_get_decoder(codec)
        context = getattr(decoder, "codec", None)  # aiortc's decoders: an unopened PyAV context
        if kind == "video" and isinstance(context, av.CodecContext):
            context.thread_count = DECODER_THREADS
        return WatchedDecoder(decoder, name, on_undecodable)

    return get_decoder


def without_decode_failures(record: logging.LogRecord) -> bool:
    """A filter for aiortc's receiver logger: its per-frame decode warning is left out (the
    watched decoder logs those failures)."""
    return record.msg != AIORTC_DECODE_WARNING
