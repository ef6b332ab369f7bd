"""Egresses that encode the stream themselves (a recording, an RTMP forward): the raw frames of
their subscription are taken at once into a queue of their own (the newest video frame; a
bounded queue of audio), and a thread of their own converts (to yuv420p), encodes and writes,
taking the newest frame whenever it is free; frames it had no time for are counted in
``streamvsr_egress_frames_dropped_total``. So they never slow the engine or the live session."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, ClassVar

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..publisher import Publisher
from .base import Egress
from .metrics import EgressMetrics
from .output import EncodeConfig, Output, SerialThread

log = logging.getLogger(__name__)

AUDIO_DEPTH = 50  # audio frames waiting for the writer (1 s of 20 ms frames)


class EncodingEgress(Egress):
    """An egress that writes its subscription's frames to an ``Output`` in its own thread."""

    running_when_written: ClassVar[bool] = True  # else a subclass says when it is running

    def __init__(
        self,
        stream: str,
        session_id: str,
        publisher: Publisher,
        config: EncodeConfig,
        metrics: EgressMetrics,
    ):
        self.config = config
        self.frames = 0
        self._publisher = publisher
        self._tracks = publisher.subscribe_frames()
        self._has_audio = any(t.kind == "audio" for t in self._tracks)
        self._video_in: av.VideoFrame | None = None
        self._audio_in: deque[tuple[av.AudioFrame, float]] = deque()
        self._accepting = False  # frames are taken (not while an RTMP target is retried)
        self._wake = asyncio.Event()
        self._thread = SerialThread(f"egress {self.kind} {stream}")
        super().__init__(stream, session_id, metrics)
        self._readers = [asyncio.create_task(self._read(track)) for track in self._tracks]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "frames": self.frames, "audio": self._has_audio}

    def _end(self) -> None:
        self._publisher.unsubscribe(self._tracks)

    def _finish(self) -> None:
        self._publisher.unsubscribe(self._tracks)
        for reader in self._readers:
            reader.cancel()
        self._thread.shutdown(wait=False)

    def _summary(self) -> str:
        return f": {self.frames} frames"

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
