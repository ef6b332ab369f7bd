"""Received video that cannot be decoded: counted, and logged once per period instead of per frame.

OBS drops its packets until DTLS is up, so its first keyframe never arrives, and it ignores keyframe
requests: every frame until its next keyframe (x264 in OBS: ~8 s by default) fails to decode, and
aiortc logs a warning for each. ``decoder_factory`` wraps aiortc's decoders to count those frames
and sum them up; ``streamvsr.startup`` installs it in place of aiortc's factory, together with
``without_decode_failures``, which drops aiortc's own per-frame warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import av
from aiortc.codecs import get_decoder as aiortc_get_decoder

log = logging.getLogger(__name__)

SUMMARY_PERIOD = 10.0  # seconds between log lines of one receiver's decoder
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

    def decode(self, encoded_frame):
        try:
            frames = self._inner.decode(encoded_frame)
        except av.FFmpegError as exc:
            self._on_undecodable()
            self._failed(exc)
            raise
        if self._unlogged and self._period_over():
            self._summarise()
        return frames

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


def decoder_factory(on_undecodable: Callable[[], None]):
    """A stand-in for aiortc's ``get_decoder``: its decoders, watched, calling ``on_undecodable``
    (from decoder threads) for each frame that fails."""

    def get_decoder(codec):
        name = codec.mimeType.split("/")[1]
        return WatchedDecoder(aiortc_get_decoder(codec), name, on_undecodable)

    return get_decoder


def without_decode_failures(record: logging.LogRecord) -> bool:
    """A filter for aiortc's receiver logger: its per-frame decode warning is left out (the
    watched decoder logs those failures)."""
    return record.msg != AIORTC_DECODE_WARNING
