"""Egress: where a WHIP stream's upscaled output goes next, with its audio.

An egress is one more subscriber of a stream's ``Publisher``: it gets the upscaled video and the
audio like a WHEP viewer, encodes them (H.264 by libx264, AAC) and muxes them into a container.

* a **recording** writes fragmented MP4 (``{stream}-{UTC time}.mp4`` in ``record_dir``): a
  fragment per keyframe (one a second), so the file plays up to its last fragment even if the
  server is killed; a write error (disk full) ends the recording with one log line and a metric,
  and the stream goes on;
* an **RTMP forward** pushes FLV to an ``rtmp://`` or ``rtmps://`` URL, and reconnects with
  exponential backoff (1 s .. 30 s) while the target refuses, drops or stalls it; its network end
  is a child process (``egress_push.py``), because FFmpeg's RTMP handshake holds the GIL.

Neither ever slows the engine or the live session: the subscriber's tracks are read at once into
the egress's own queue (the newest video frame; a bounded queue of audio), and a thread of its
own converts (to yuv420p), encodes and writes, taking the newest frame whenever it is free; frames
it had no time for are counted in ``streamvsr_egress_frames_dropped_total``.

Timestamps: each track keeps its sender's spacing (RTP timestamps, wrapping at 2^32), placed on
a clock that starts at the first video frame's arrival; the audio's first frame is placed at its
arrival, so audio and video are in sync to within the network and jitter-buffer delays, and gaps
in the audio are filled with silence.

Started for a stream's configured targets when its WHIP session opens (``start_configured``), or
per request (``add_routes``: ``/api/streams/{stream}/record`` and ``/forward``); they end, file
or connection finished cleanly, when the session closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import fractions
import json
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import av
import numpy as np
from aiohttp import web
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType
from prometheus_client import CollectorRegistry, Counter, Gauge

from .access import Action
from .egress_push import CONNECTED, URL_VARIABLE, message
from .egress_targets import host_and_port, redact, rtmp_url
from .http import RUNTIME, authorize, read_body, runtime_of
from .metrics import Metrics
from .problems import Problem
from .publisher import Publisher

if TYPE_CHECKING:
    from streamvsr.config import ServerSettings

    from .runtime import Runtime
    from .sessions import WhipSession

log = logging.getLogger(__name__)

KINDS = ("record", "rtmp")
STATES = ("starting", "running", "retrying", "failed")
MEDIA = ("video", "audio")

VIDEO_RATE = 90_000  # the video's time base, as RTP's
AUDIO_RATE = 48_000
AUDIO_BITRATE = 128_000
FRAME_RATE = 30  # a hint for x264's rate control; timestamps decide
KEYFRAME_INTERVAL_S = 1.0  # a keyframe (a new MP4 fragment) at least this often
AUDIO_DEPTH = 50  # audio frames waiting for the writer (1 s of 20 ms frames)
MAX_JUMP_S = 10.0  # timestamp steps beyond this (or backwards) start the track's clock anew
MAX_SILENCE_S = 30.0  # audio gaps are filled with silence, up to this
BACKOFF_S = (1.0, 30.0)  # RTMP reconnects: first delay, largest delay
STABLE_S = 30.0  # a connection that lasted this long starts the backoff over
CONNECT_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0  # how long a stop waits for the file or the connection to be finished
STALL_S = 10.0  # an RTMP target that takes no data for this long is dropped and retried
HANDSHAKE_TIMEOUT_S = 10.0  # an RTMP target that has not connected this long after the first data
PUSHER = Path(__file__).with_name("egress_push.py")  # the RTMP push's process

MP4_OPTIONS = {
    # a moov without samples first, then a moof+mdat per keyframe: every fragment written is
    # playable, whatever happens to the process later
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "flush_packets": "1",  # each fragment goes to the file at once, not when a buffer fills
    "max_interleave_delta": "1000000",  # a track that stalls holds the other back 1 s at most
}
FLV_OPTIONS = {
    "flvflags": "no_duration_filesize",  # a live push cannot seek back to fill these in
    "flush_packets": "1",
    "max_interleave_delta": "1000000",
}


# --- metrics ---------------------------------------------------------------------------------


class EgressMetrics:
    """The egresses' metrics, on the app's registry; labels are bounded (kind, state, media)."""

    def __init__(self, registry: CollectorRegistry):
        self.state = Gauge(
            "streamvsr_egress_state",
            "Egresses (recordings, RTMP forwards) by kind and state: starting (no frame written "
            "yet), running, retrying (RTMP: reconnecting after an error), failed (recording: "
            "write error)",
            ["kind", "state"], registry=registry,
        )  # fmt: skip
        self.frames = Counter(
            "streamvsr_egress_frames_total",
            "Upscaled video frames written by egresses, by kind", ["kind"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "streamvsr_egress_frames_dropped_total",
            "Frames an egress had no time for (its encoder was busy with an earlier one), by kind "
            "and media",
            ["kind", "media"], registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "streamvsr_egress_failures_total",
            "Egress errors by kind: a recording that could not be written, an RTMP target that "
            "refused or dropped the connection",
            ["kind"], registry=registry,
        )  # fmt: skip
        for kind in KINDS:
            self.frames.labels(kind)
            self.failures.labels(kind)
            for state in STATES:
                self.state.labels(kind, state)
            for media in MEDIA:
                self.dropped.labels(kind, media)


# --- the writer thread -----------------------------------------------------------------------


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


# --- encoding and muxing (in the writer thread) ----------------------------------------------


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


# --- egresses ----------------------------------------------------------------------------------


class Egress:
    """One subscriber of a stream that encodes and writes it somewhere (see the module's doc)."""

    kind: ClassVar[str]  # its metrics' label
    title: ClassVar[str]  # its name in the logs
    running_when_written: ClassVar[bool] = True  # else a subclass says when it is running

    def __init__(
        self,
        stream: str,
        session_id: str,
        publisher: Publisher,
        config: EncodeConfig,
        metrics: EgressMetrics,
    ):
        self.stream, self.session_id = stream, session_id
        self.config = config
        self.metrics = metrics
        self.state: str | None = None
        self.error: str | None = None
        self.frames = 0
        self._publisher = publisher
        self._tracks = publisher.subscribe_frames()
        self._has_audio = any(t.kind == "audio" for t in self._tracks)
        self._video_in: av.VideoFrame | None = None
        self._audio_in: deque[tuple[av.AudioFrame, float]] = deque()
        self._accepting = False  # frames are taken (not while an RTMP target is retried)
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        self._thread = SerialThread(f"egress {self.kind} {stream}")
        self._set_state("starting")
        self.task = asyncio.create_task(self._run())

    @property
    def target(self) -> str:
        """Where it goes, as logs and answers show it."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.title} of stream {self.stream!r} to {self.target}"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "frames": self.frames,
            "audio": self._has_audio,
            **({"error": self.error} if self.error else {}),
        }

    def _set_state(self, state: str | None) -> None:
        if self.state is not None:
            self.metrics.state.labels(self.kind, self.state).dec()
        if state is not None:
            self.metrics.state.labels(self.kind, state).inc()
        self.state = state

    async def stop(self) -> None:
        """End it: what was taken is written and the file or connection finished (``_run``
        gives that ``STOP_TIMEOUT_S``)."""
        self._publisher.unsubscribe(self._tracks)
        await asyncio.wait([self.task])

    async def _run(self) -> None:
        readers = [asyncio.create_task(self._read(track)) for track in self._tracks]
        log.info("%s started", self)
        serve = asyncio.create_task(self._serve())
        try:
            ended = asyncio.create_task(self._ended.wait())
            await asyncio.wait([serve, ended], return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            # Once the stream has ended, the file or connection has STOP_TIMEOUT_S to be
            # finished: a writer stuck on a peer that stopped reading is left behind (its thread
            # is a daemon) rather than holding the egress forever.
            done, _ = await asyncio.wait([serve], timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning(
                    "%s: not finished %g s after the stream ended; left behind", self,
                    STOP_TIMEOUT_S,
                )  # fmt: skip
                serve.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serve
        except Exception:
            log.exception("%s failed unexpectedly", self)
        finally:
            serve.cancel()
            self._publisher.unsubscribe(self._tracks)
            for reader in readers:
                reader.cancel()
            self._set_state(None)
            self._thread.shutdown(wait=False)
            log.info("%s ended: %d frames", self, self.frames)

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _read(self, track: MediaStreamTrack) -> None:
        """Take the track's frames as they come (the publisher never waits for an egress): the
        newest video frame, a bounded queue of audio; what the writer had no time for is
        counted as dropped."""
        try:
            while True:
                frame = await track.recv()
                if not self._accepting:
                    continue
                if track.kind == "video":
                    if self._video_in is not None:
                        self.metrics.dropped.labels(self.kind, "video").inc()
                    self._video_in = frame
                else:
                    if len(self._audio_in) >= AUDIO_DEPTH:
                        self._audio_in.popleft()
                        self.metrics.dropped.labels(self.kind, "audio").inc()
                    self._audio_in.append((frame, time.monotonic()))
                self._wake.set()
        except MediaStreamError:
            pass
        finally:
            if track.kind == "video":  # the stream (or this subscription) has ended
                self._ended.set()
                self._wake.set()

    async def _write(self, output: Output) -> None:
        """Hand what arrives to ``output`` in the writer thread until the video ends, then
        finish it; raises what writing raised."""
        loop = asyncio.get_running_loop()
        self._accepting = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                video, self._video_in = self._video_in, None
                audio = list(self._audio_in)
                self._audio_in.clear()
                if video is not None or audio:
                    written = await loop.run_in_executor(self._thread, output.write, video, audio)
                    if written:
                        self.frames += written
                        self.metrics.frames.labels(self.kind).inc(written)
                        if self.state != "running" and self.running_when_written:
                            self._set_state("running")
                            log.info("%s: writing %dx%d", self, *output.size)
                if self._ended.is_set() and self._video_in is None and not self._audio_in:
                    break
            await loop.run_in_executor(self._thread, output.close)
        except BaseException as exc:
            self._accepting = False
            self._video_in = None
            self._audio_in.clear()
            aborted = loop.run_in_executor(self._thread, output.abort)
            if not isinstance(exc, asyncio.CancelledError):  # (a stop that timed out: no wait)
                await aborted
            raise

    async def _discard_until_ended(self) -> None:
        """Keep the subscription (so that it ends with the stream) and take nothing."""
        self._accepting = False
        await self._ended.wait()


class Recording(Egress):
    """The stream as fragmented MP4 in a file."""

    kind = "record"
    title = "recording"

    def __init__(self, path: Path, *args, new_file: bool = True, **kwargs):
        """``new_file``: a free name next to ``path`` if it exists (a stream recorded twice in
        one second); False: ``path`` itself (a device such as /dev/full)."""
        self.path = path
        self._new_file = new_file
        super().__init__(*args, **kwargs)

    @property
    def target(self) -> str:
        return str(self.path)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.path)}

    def _open(self) -> av.container.OutputContainer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stem, n = self.path.stem, 1
        while self._new_file and self.path.exists():  # never overwrite a recording
            n += 1
            self.path = self.path.with_name(f"{stem}-{n}{self.path.suffix}")
        return av.open(str(self.path), "w", format="mp4", container_options=MP4_OPTIONS)

    async def _serve(self) -> None:
        try:
            await self._write(Output(self._open, self.config, self._has_audio))
        except Exception as exc:
            self.error = message(exc)
            self.metrics.failures.labels(self.kind).inc()
            self._set_state("failed")
            log.error("%s stopped: %s (the stream goes on)", self, self.error)
            await self._discard_until_ended()


class PipeWriter:
    """The write end of a pipe as the file PyAV writes FLV to. Its writes block without the GIL
    while the reader is behind; ``blocked_since`` tells a watchdog for how long."""

    def __init__(self, fd: int):
        self.fd = fd
        self.first_write: float | None = None
        self.blocked_since: float | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.blocked_since = time.monotonic()
        if self.first_write is None:
            self.first_write = self.blocked_since
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        finally:
            self.blocked_since = None
        return len(data)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class RtmpForward(Egress):
    """The stream pushed as FLV to an RTMP(S) server, reconnecting with backoff.

    This process encodes and muxes; the network end is a child process
    (``server/egress_push.py``) fed through a pipe, because FFmpeg's RTMP connect and handshake
    run holding the GIL: a target that never answers would otherwise freeze the server. A child
    that takes no data for ``STALL_S`` (a target that stopped reading) is killed and the
    connection retried, as is one that has not connected ``HANDSHAKE_TIMEOUT_S`` after its
    first data. It is running once the pusher says it has connected."""

    kind = "rtmp"
    title = "RTMP forward"
    running_when_written = False

    def __init__(self, url: str, *args, **kwargs):
        self.url = rtmp_url(url)
        super().__init__(*args, **kwargs)

    @property
    def target(self) -> str:
        return redact(self.url)

    async def _serve(self) -> None:
        delay = BACKOFF_S[0]
        while not self._ended.is_set():
            started = time.monotonic()
            try:
                await _reachable(self.url)
                await self._push()
                return  # the stream ended: the connection was finished cleanly
            except Exception as exc:
                self.error = str(exc) if isinstance(exc, PushError) else message(exc)
                self.metrics.failures.labels(self.kind).inc()
                if self._ended.is_set():
                    log.warning("%s: %s", self, self.error)
                    return
                if time.monotonic() - started >= STABLE_S:
                    delay = BACKOFF_S[0]
                self._set_state("retrying")
                log.warning("%s: %s; retrying in %g s", self, self.error, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), delay)
            delay = min(delay * 2, BACKOFF_S[1])

    async def _push(self) -> None:
        """One connection, until the stream ends or it fails (``PushError``)."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        pipe = PipeWriter(write_fd)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(PUSHER), stdin=read_fd, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**os.environ, URL_VARIABLE: self.url},
            )  # fmt: skip
        except BaseException:
            pipe.close()
            raise
        finally:
            os.close(read_fd)
        why: list[str] = []  # the watchdog's reason to kill the pusher
        watchdog = asyncio.create_task(self._watch(pipe, process, why))

        def open_container() -> av.container.OutputContainer:
            return av.open(pipe, "w", format="flv", container_options=FLV_OPTIONS)

        try:
            await self._write(Output(open_container, self.config, self._has_audio))
            await loop.run_in_executor(self._thread, pipe.close)  # the pusher's end of input
            if await process.wait() != 0:
                raise PushError(why[0] if why else await _last_words(process))
        except PushError:
            raise
        except Exception as exc:
            if why:
                raise PushError(why[0]) from exc
            raise PushError(await _last_words(process) or message(exc)) from exc
        finally:
            watchdog.cancel()
            if process.returncode is None:
                process.kill()  # a writer blocked on the pipe fails now, and goes on
            loop.run_in_executor(self._thread, pipe.close)  # after the writer's last job

    async def _watch(
        self, pipe: PipeWriter, process: asyncio.subprocess.Process, why: list[str]
    ) -> None:
        """Running once the pusher has connected; killed if it has not ``HANDSHAKE_TIMEOUT_S``
        after the first data (a target that never answers the handshake), or takes no data for
        ``STALL_S`` (a target that stopped reading)."""
        connected = asyncio.Event()

        async def listen() -> None:
            heard = (await process.stdout.readline()).decode().strip()
            if heard == CONNECTED and self.state not in (None, "running"):
                connected.set()
                self._set_state("running")
                log.info("%s: connected", self)

        listener = asyncio.create_task(listen())
        try:
            while process.returncode is None:
                await asyncio.sleep(0.25)
                now = time.monotonic()
                first, blocked = pipe.first_write, pipe.blocked_since
                if not connected.is_set() and first and now - first > HANDSHAKE_TIMEOUT_S:
                    why.append(f"no RTMP answer within {HANDSHAKE_TIMEOUT_S:g} s")
                elif blocked is not None and now - blocked > STALL_S:
                    why.append(f"the target took no data for {STALL_S:g} s")
                else:
                    continue
                process.kill()  # the writer's pipe breaks: it fails, and the forward retries
                return
        finally:
            listener.cancel()


class PushError(Exception):
    """An RTMP connection that failed; the message says why, without the URL."""


async def _last_words(process: asyncio.subprocess.Process) -> str:
    """The pusher's error line (it prints one when it fails)."""
    if process.returncode is None:
        process.kill()
    await process.wait()
    text = (await process.stderr.read(4096)).decode(errors="replace").strip()
    lines = text.splitlines()
    return lines[-1][:300] if lines else f"the RTMP pusher ended with {process.returncode}"


async def _reachable(url: str) -> None:
    """Connect to the target's host and port and hang up: an unreachable host fails in
    ``CONNECT_TIMEOUT_S`` here, not after the OS's connect timeout in the writer thread."""
    host, port = host_and_port(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ConnectionError(f"{host}:{port} did not answer in {CONNECT_TIMEOUT_S:g} s") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# --- the egresses of an app --------------------------------------------------------------------


class Egresses:
    """An app's egresses (one set per ``Metrics``, see ``egresses_of``), by their session and
    target: a stream published anew gets egresses of its own."""

    def __init__(self, metrics: Metrics):
        self.metrics = EgressMetrics(metrics.registry)
        self._egresses: dict[tuple[str, str], Egress] = {}

    def of(self, session: WhipSession) -> list[Egress]:
        return [e for (sid, _), e in self._egresses.items() if sid == session.id]

    def get(self, session: WhipSession, key: str) -> Egress | None:
        return self._egresses.get((session.id, key))

    def record(self, session: WhipSession, settings: ServerSettings) -> Recording:
        now = datetime.datetime.now(datetime.timezone.utc)
        path = Path(settings.record_dir) / f"{session.stream}-{now:%Y%m%dT%H%M%SZ}.mp4"
        return self._add(session, "record", lambda *a: Recording(path, *a), settings)

    def forward(self, session: WhipSession, url: str, settings: ServerSettings) -> RtmpForward:
        return self._add(session, url, lambda *a: RtmpForward(url, *a), settings)

    def _add(self, session: WhipSession, key: str, make, settings: ServerSettings):
        if session.closed:  # its publisher has stopped: a subscription would never end
            raise Problem(404, "Stream not live", f"stream {session.stream!r} has ended")
        egress = make(
            session.stream, session.id, session.publisher, EncodeConfig.from_settings(settings),
            self.metrics,
        )  # fmt: skip
        self._egresses[session.id, key] = egress
        egress.task.add_done_callback(lambda _: self._forget(session.id, key, egress))
        return egress

    def _forget(self, session_id: str, key: str, egress: Egress) -> None:
        if self._egresses.get((session_id, key)) is egress:
            del self._egresses[session_id, key]

    async def close_all(self) -> None:
        egresses = list(self._egresses.values())
        await asyncio.gather(*(e.stop() for e in egresses))


_EGRESSES: weakref.WeakKeyDictionary[Metrics, Egresses] = weakref.WeakKeyDictionary()


def egresses_of(metrics: Metrics) -> Egresses:
    """The egresses of the app whose metrics these are (made on first use)."""
    found = _EGRESSES.get(metrics)
    if found is None:
        found = _EGRESSES[metrics] = Egresses(metrics)
    return found


def start_configured(rt: Runtime, session: WhipSession) -> None:
    """Start what the settings ask for ``session``'s stream (``record_streams``, ``forward``);
    called when a WHIP session has opened. Never fails the session."""
    settings = rt.settings
    try:
        manager = egresses_of(rt.metrics)
        if any(fnmatchcase(session.stream, p) for p in settings.record_streams):
            if settings.record_dir:
                manager.record(session, settings)
            else:
                log.warning(
                    "stream %r is in record_streams but record_dir is not set: not recorded",
                    session.stream,
                )
        for url in dict(settings.forward).get(session.stream, ()):
            manager.forward(session, url, settings)
    except Exception:
        log.exception("could not start the egresses of %s", session)


# --- the API -------------------------------------------------------------------------------------


def _live_session(rt: Runtime, stream: str) -> WhipSession:
    session = rt.registry.source_of(stream)
    if session is None:
        raise Problem(404, "Stream not live", f"stream {stream[:64]!r} has no publisher")
    return session


def _json(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status)


async def post_record(request: web.Request) -> web.Response:
    """Record a live stream to ``record_dir``: 201, or 200 if it is being recorded already."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    session = _live_session(rt, request.match_info["stream"])
    if not rt.settings.record_dir:
        raise Problem(409, "Recording is off", "set server.record_dir to record streams")
    manager = egresses_of(rt.metrics)
    existing = manager.get(session, "record")
    if existing is not None and existing.state != "failed":
        return _json(200, existing.describe())
    if existing is not None:
        await existing.stop()
    return _json(201, manager.record(session, rt.settings).describe())


async def delete_record(request: web.Request) -> web.Response:
    """Stop recording a stream; answers once the file is finished."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    session = _live_session(rt, request.match_info["stream"])
    egress = egresses_of(rt.metrics).get(session, "record")
    if egress is None:
        raise Problem(404, "Not recorded", f"stream {session.stream!r} is not being recorded")
    await egress.stop()
    return _json(200, egress.describe())


async def _url_of(request: web.Request, required: bool) -> str | None:
    body = await read_body(request)
    if not body.strip() and not required:
        return None
    try:
        url = json.loads(body)["url"]
    except (ValueError, TypeError, KeyError):
        raise Problem(
            400, "Bad request body", 'the body must be JSON: {"url": "rtmp://..."}'
        ) from None
    try:
        return rtmp_url(url)
    except ValueError as exc:
        raise Problem(400, "Bad forward URL", str(exc)) from None


async def post_forward(request: web.Request) -> web.Response:
    """Forward a live stream by RTMP push to {"url": "rtmp://..."}: 201, or 200 if it is
    forwarded there already."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    url = await _url_of(request, required=True)
    session = _live_session(rt, request.match_info["stream"])
    manager = egresses_of(rt.metrics)
    existing = manager.get(session, url)
    if existing is not None:
        return _json(200, existing.describe())
    return _json(201, manager.forward(session, url, rt.settings).describe())


async def delete_forward(request: web.Request) -> web.Response:
    """Stop forwarding a stream to {"url": ...}, or (without a body) to every target."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    url = await _url_of(request, required=False)
    session = _live_session(rt, request.match_info["stream"])
    manager = egresses_of(rt.metrics)
    forwards = [e for e in manager.of(session) if e.kind == "rtmp" and url in (None, e.url)]
    if not forwards:
        raise Problem(404, "Not forwarded", f"stream {session.stream!r} has no such forward")
    await asyncio.gather(*(e.stop() for e in forwards))
    return _json(200, [e.describe() for e in forwards])


async def get_egress(request: web.Request) -> web.Response:
    """A live stream's recording and forwards, with their states."""
    authorize(request, Action.API)
    rt = runtime_of(request)
    session = _live_session(rt, request.match_info["stream"])
    return _json(200, [e.describe() for e in egresses_of(rt.metrics).of(session)])


async def _finish_all(app: web.Application) -> None:
    """At shutdown (after the sessions have closed): wait for files and connections to be
    finished."""
    rt = app.get(RUNTIME)
    if rt is not None:
        await egresses_of(rt.metrics).close_all()


_ROUTES_ADDED = web.AppKey("egress_routes", bool)


def add_routes(app: web.Application) -> None:
    """The egress API, and finishing the egresses at shutdown (once per app)."""
    if app.get(_ROUTES_ADDED):
        return
    app[_ROUTES_ADDED] = True
    app.router.add_post("/api/streams/{stream}/record", post_record)
    app.router.add_delete("/api/streams/{stream}/record", delete_record)
    app.router.add_post("/api/streams/{stream}/forward", post_forward)
    app.router.add_delete("/api/streams/{stream}/forward", delete_forward)
    app.router.add_get("/api/streams/{stream}/egress", get_egress)
    app.on_startup.append(_show_metrics)
    app.on_cleanup.append(_finish_all)


async def _show_metrics(app: web.Application) -> None:
    """The egress metrics from the start (at 0), not from the first egress on."""
    for value in list(app.values()):
        if isinstance(value, Metrics):
            egresses_of(value)
