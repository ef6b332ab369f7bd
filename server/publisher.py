"""One upscaled stream, many subscribers: the engine's frames and the received audio, fanned out.

Like aiortc's ``MediaRelay``, a subscriber gets tracks of its own and a slow one never holds back
the others: its video track keeps only the newest frame, its audio track a short queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .metrics import Metrics
from .tracks import UpscaledTrack

AUDIO_DEPTH = 25  # audio frames a subscriber may fall behind by (0.5 s of 20 ms Opus frames)


class RelayedTrack(MediaStreamTrack):
    """A subscriber's copy of a received track; the oldest frames go when it falls behind."""

    def __init__(self, kind: str, depth: int):
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=depth)

    def put(self, frame) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self):
        frame = await self._queue.get()
        if frame is None or self.readyState != "live":
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wake a waiting recv() so that it ends


class Publisher:
    """Where one stream's media goes: each subscriber's upscaled video track (the engine's frames
    are handed to every current one) and a copy of the stream's audio, timestamps kept so that
    audio and video stay in sync."""

    def __init__(self, metrics: Metrics, audio_depth: int = AUDIO_DEPTH):
        self._metrics = metrics
        self._audio_depth = audio_depth
        self._video: set[UpscaledTrack] = set()
        self._audio: set[RelayedTrack] = set()
        self._audio_source: MediaStreamTrack | None = None
        self._relay: asyncio.Task | None = None

    @property
    def outputs(self) -> tuple[UpscaledTrack, ...]:
        """The video tracks that the next upscaled frame goes to."""
        return tuple(self._video)

    def behind(self, frame_coming: bool) -> bool:
        """Whether every output's encoder is behind (``UpscaledTrack.behind``): a new frame would
        reach none of them. Without outputs, no."""
        return bool(self._video) and all(track.behind(frame_coming) for track in self._video)

    def subscribe(self) -> list[MediaStreamTrack]:
        """A new subscriber's tracks: the upscaled video, and the audio if the stream has any."""
        video = UpscaledTrack(self._metrics)
        self._video.add(video)
        if self._audio_source is None:
            return [video]
        audio = RelayedTrack(self._audio_source.kind, self._audio_depth)
        self._audio.add(audio)
        return [video, audio]

    def subscribe_frames(self) -> list[MediaStreamTrack]:
        """A subscriber's tracks of raw media, for those that encode it their own way (the
        egresses): the upscaled frames (newest wins) and the audio if the stream has any."""
        return self.subscribe()

    def unsubscribe(self, tracks: Iterable[MediaStreamTrack]) -> None:
        """Stop a subscriber's tracks; no more frames go to them."""
        for track in tracks:
            self._video.discard(track)
            self._audio.discard(track)
            track.stop()

    def publish_audio(self, source: MediaStreamTrack) -> None:
        """Read ``source`` for as long as it lives (so that nothing piles up) and copy each frame
        to the audio subscribers; subscribers from now on get an audio track."""
        self._audio_source = source
        self._relay = asyncio.create_task(self._run_relay(source))

    async def _run_relay(self, source: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await source.recv()
                for track in self._audio:
                    track.put(frame)
        except MediaStreamError:
            pass
        finally:  # the audio has ended: so does every subscriber's copy of it
            for track in self._audio:
                track.stop()

    def stop(self) -> None:
        """End the stream: every subscriber's tracks stop."""
        if self._relay is not None:
            self._relay.cancel()
        self.unsubscribe(self._video | self._audio)
