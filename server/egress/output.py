"""Encoding and muxing, in an egress's own thread: the thread, the encoder settings, the clocks
that place each track's frames on the output's time line, and the container being written.

Timestamps: each track keeps its sender's spacing (RTP timestamps, wrapping at 2^32), placed on
a clock that starts at the first video frame's arrival; the audio's first frame is placed at its
arrival, so audio and video are in sync to within the network and jitter-buffer delays, and gaps
in the audio are filled with silence.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fractions
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.frame import PictureType

if TYPE_CHECKING:
    from streamvsr.config import ServerSettings

VIDEO_RATE = 90_000  # the video's time base, as RTP's
AUDIO_RATE = 48_000
AUDIO_BITRATE = 128_000
FRAME_RATE = 30  # a hint for x264's rate control; timestamps decide
KEYFRAME_INTERVAL_S = 1.0  # a keyframe (a new MP4 fragment) at least this often
MAX_JUMP_S = 10.0  # timestamp steps beyond this (or backwards) start the track's clock anew
MAX_SILENCE_S = 30.0  # audio gaps are filled with silence, up to this


class SerialThread(concurrent.futures.Executor):
    """An executor of one daemon thread, for ``loop.run_in_executor``: an egress's conversions,
    encodes and writes run there in order. Daemon, unlike ``ThreadPoolExecutor``'s: a write
    stuck on a dead RTMP peer does not keep the process from exiting."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)


@dataclass(frozen=True)
class EncodeConfig:
    bitrate: int = 6_000_000
    preset: str = "veryfast"
    threads: int = 0  # x264's choice

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> EncodeConfig:
        return cls(settings.egress_bitrate, settings.x264_preset, settings.encoder_threads)


def _signed_step(now: int, before: int) -> int:
    """``now - before`` for timestamps that wrap at 2^32 (RTP's)."""
    step = (now - before) % (1 << 32)
    return step - (1 << 32) if step >= 1 << 31 else step


class Timeline:
    """Places a track's frames on the output's clock, in ticks of ``rate`` since ``origin`` (a
    ``time.monotonic()``): the first at its arrival, the next ones by their timestamps' steps,
    so that the sender's spacing is kept. A frame that goes back in time is dropped (None); a
    jump of more than ``MAX_JUMP_S`` (a sender that restarted) places it by its arrival again."""

    def __init__(self, rate: int, origin: float):
        self.rate, self.origin = rate, origin
        self._pts: int | None = None
        self._out = -1

    def place(self, pts: int | None, time_base: fractions.Fraction | None, arrived: float):
        if pts is not None and time_base is not None and self._pts is not None:
            step = round(_signed_step(pts, self._pts) * time_base * self.rate)
            if 0 < step <= MAX_JUMP_S * self.rate:
                self._pts, self._out = pts, self._out + step
                return self._out
            if -MAX_JUMP_S * self.rate <= step <= 0:
                return None
        self._pts = pts
        self._out = max(self._out + 1, round((arrived - self.origin) * self.rate))
        return self._out


class Output:
    """One container being written: its encoders and clocks. Opened at the first video frame
    (its size is the stream's from then on); not thread-safe: the egress's thread runs it."""

    def __init__(
        self,
        open_container: Callable[[], av.container.OutputContainer],
        config: EncodeConfig,
        audio: bool,
    ):
        self._open_container = open_container
        self._config = config
        self._audio_wanted = audio
        self.container: av.container.OutputContainer | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._video: av.video.stream.VideoStream | None = None
        self._audio: av.audio.stream.AudioStream | None = None
        self._video_clock: Timeline | None = None
        self._audio_clock: Timeline | None = None
        self._resampler: av.AudioResampler | None = None
        self._last_keyframe = -(1 << 62)
        self._audio_next: int | None = None  # where the next input audio frame should start
        self._audio_out = 0  # pts of the next encoded audio frame

    def write(self, video: av.VideoFrame | None, audio: list[tuple[av.AudioFrame, float]]) -> int:
        """Encode and mux what came since the last call; returns the video frames written."""
        written = 0
        if video is not None:
            if self.container is None:
                self._open(video)
            written = self._write_video(video)
        if self.container is not None and self._audio is not None:
            for frame, arrived in audio:  # audio from before the first video frame is not kept
                self._write_audio(frame, arrived)
        return written

    def _open(self, first: av.VideoFrame) -> None:
        origin = first.opaque if isinstance(first.opaque, float) else time.monotonic()
        self.size = (max(2, first.width // 2 * 2), max(2, first.height // 2 * 2))
        kbit = self._config.bitrate // 1000
        container = self._open_container()
        try:
            video = container.add_stream(
                "libx264",
                rate=FRAME_RATE,
                options={
                    "preset": self._config.preset,
                    "tune": "zerolatency",
                    "forced-idr": "1",
                    "x264-params": f"vbv-maxrate={kbit}:vbv-bufsize={kbit}",
                },
            )
            video.width, video.height = self.size
            video.pix_fmt = "yuv420p"
            video.bit_rate = self._config.bitrate
            video.codec_context.time_base = fractions.Fraction(1, VIDEO_RATE)
            video.codec_context.gop_size = 2 * FRAME_RATE
            video.codec_context.thread_count = self._config.threads
            if self._audio_wanted:
                self._audio = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
                self._audio.bit_rate = AUDIO_BITRATE
                self._resampler = av.AudioResampler(
                    format="fltp", layout="stereo", rate=AUDIO_RATE, frame_size=1024
                )
        except BaseException:
            container.close()
            raise
        self.container, self._video = container, video
        self._video_clock = Timeline(VIDEO_RATE, origin)
        self._audio_clock = Timeline(AUDIO_RATE, origin)

    def _write_video(self, frame: av.VideoFrame) -> int:
        arrived = frame.opaque if isinstance(frame.opaque, float) else time.monotonic()
        pts = self._video_clock.place(frame.pts, frame.time_base, arrived)
        if pts is None:
            return 0
        width, height = self.size
        out = frame.reformat(width=width, height=height, format="yuv420p")
        out.pts, out.time_base = pts, fractions.Fraction(1, VIDEO_RATE)
        if pts - self._last_keyframe >= KEYFRAME_INTERVAL_S * VIDEO_RATE:
            out.pict_type = PictureType.I
            self._last_keyframe = pts
        else:
            out.pict_type = PictureType.NONE
        self.container.mux(self._video.encode(out))
        self.frames += 1
        return 1

    def _write_audio(self, frame: av.AudioFrame, arrived: float) -> None:
        start = self._audio_clock.place(frame.pts, frame.time_base, arrived)
        if start is None:
            return
        # Its own copy: the publisher hands the same frame to every subscriber.
        samples = frame.to_ndarray()
        if self._audio_next is None:
            self._audio_next = self._audio_out = start
        gap = start - self._audio_next
        if gap < -frame.samples // 2:  # overlaps what was written
            return
        if gap > frame.samples // 2:
            silence = min(gap, MAX_SILENCE_S * AUDIO_RATE) * frame.sample_rate // AUDIO_RATE
            self._resample(np.zeros_like(samples), frame, int(silence))
        self._resample(samples, frame, frame.samples)
        self._audio_next = start + round(frame.samples * AUDIO_RATE / frame.sample_rate)

    def _resample(self, samples: np.ndarray, like: av.AudioFrame, count: int) -> None:
        """Encode ``count`` samples (repeating ``samples``' silence for a gap) in ``like``'s
        format."""
        per_frame = samples.shape[1] // (1 if like.format.is_planar else len(like.layout.channels))
        while count > 0:
            n = min(count, per_frame)
            width = n if like.format.is_planar else n * len(like.layout.channels)
            copy = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, :width]),
                format=like.format.name, layout=like.layout.name,
            )  # fmt: skip
            copy.sample_rate = like.sample_rate
            self._encode_audio(self._resampler.resample(copy))
            count -= n

    def _encode_audio(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            frame.pts, frame.time_base = self._audio_out, fractions.Fraction(1, AUDIO_RATE)
            self._audio_out += frame.samples
            self.container.mux(self._audio.encode(frame))

    def close(self) -> None:
        """Flush the encoders and write the trailer (the last fragment)."""
        if self.container is None:
            return
        try:
            if self._audio is not None:
                self._encode_audio(self._resampler.resample(None))
                self.container.mux(self._audio.encode(None))
            self.container.mux(self._video.encode(None))
        finally:
            container, self.container = self.container, None
            container.close()

    def abort(self) -> None:
        """Close after an error, quietly: what can be finished is."""
        container, self.container = self.container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
