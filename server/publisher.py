"""One upscaled stream, many subscribers: the engine's frames and the received audio, fanned out.

Like aiortc's ``MediaRelay``, a subscriber gets tracks of its own and a slow one never holds back
the others. WebRTC subscribers (the page, WHEP viewers) get video encoded once per stream and
codec (``stream_encoding``); egresses get the raw frames, the newest one only. Audio goes to each
subscriber through a short queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .encoders import Encoders
from .metrics import Metrics
from .stream_encoding import SharedEncoder, StreamEncoder, ViewerTrack
from .tracks import UpscaledTrack

FrameOutput = StreamEncoder | UpscaledTrack  # what takes a stream's upscaled frames

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
    """Where one stream's media goes. The upscaled frames go to the stream's video encoders (one
    per codec that its WebRTC subscribers negotiated) and to each egress's frame track; the
    received audio to its audio encoders and to each egress's audio track. Timestamps are kept,
    so that audio and video stay in sync."""

    def __init__(
        self,
        metrics: Metrics,
        encoders: Encoders | None = None,
        audio_depth: int = AUDIO_DEPTH,
    ):
        self._metrics = metrics
        self._encoders = encoders or Encoders()
        self._audio_depth = audio_depth
        # The stream's encoders by kind, then codec.
        self._shared: dict[str, dict[str, SharedEncoder]] = {"video": {}, "audio": {}}
        self._viewers: set[ViewerTrack] = set()
        self._frames: set[UpscaledTrack] = set()
        self._audio: set[RelayedTrack] = set()
        self._audio_source: MediaStreamTrack | None = None
        self._relay: asyncio.Task | None = None

    @property
    def outputs(self) -> tuple[FrameOutput, ...]:
        """Where the next upscaled frame goes: the stream's video encoders and the egresses'
        frame tracks."""
        return (*self._shared["video"].values(), *self._frames)

    def behind(self, frame_coming: bool) -> bool:
        """Whether every output is behind (``StreamEncoder.behind``): a new frame would reach
        none of them in time. Without outputs, no."""
        outputs = self.outputs
        return bool(outputs) and all(output.behind(frame_coming) for output in outputs)

    def subscribe(self) -> list[MediaStreamTrack]:
        """A WebRTC subscriber's tracks: the upscaled video and the audio if the stream has any,
        encoded by the stream's encoders for the codecs its connection negotiates
        (``ViewerTrack.use``)."""
        kinds = ["video"] if self._audio_source is None else ["video", "audio"]
        tracks = [ViewerTrack(kind, self._join, self._metrics) for kind in kinds]
        self._viewers.update(tracks)
        return list(tracks)

    def subscribe_frames(self) -> list[MediaStreamTrack]:
        """A subscriber's tracks of raw media, for those that encode it their own way (the
        egresses): the upscaled frames (newest wins) and the audio if the stream has any."""
        video = UpscaledTrack()
        self._frames.add(video)
        if self._audio_source is None:
            return [video]
        audio = RelayedTrack(self._audio_source.kind, self._audio_depth)
        self._audio.add(audio)
        return [video, audio]

    def _join(self, viewer: ViewerTrack, mime: str) -> SharedEncoder:
        shared = self._shared[viewer.kind]
        encoder = shared.get(mime)
        if encoder is None:
            encoder = shared[mime] = self._encoders.for_stream(mime, self._metrics)
        encoder.join(viewer)
        return encoder

    def unsubscribe(self, tracks: Iterable[MediaStreamTrack]) -> None:
        """Stop a subscriber's tracks; no more frames go to them. A stream encoder whose last
        viewer left ends."""
        for track in tracks:
            self._viewers.discard(track)
            self._frames.discard(track)
            self._audio.discard(track)
            if isinstance(track, ViewerTrack) and track.encoder is not None:
                self._leave(track, track.encoder)
            track.stop()

    def _leave(self, viewer: ViewerTrack, encoder: SharedEncoder) -> None:
        encoder.leave(viewer)
        shared = self._shared[viewer.kind]
        if not encoder.viewers and shared.get(encoder.mime) is encoder:
            encoder.close()
            del shared[encoder.mime]

    def publish_audio(self, source: MediaStreamTrack) -> None:
        """Read ``source`` for as long as it lives (so that nothing piles up) and hand each frame
        to the audio encoders and egress tracks; subscribers from now on get audio."""
        self._audio_source = source
        self._relay = asyncio.create_task(self._run_relay(source))

    async def _run_relay(self, source: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await source.recv()
                for track in self._audio:
                    track.put(frame)
                for encoder in list(self._shared["audio"].values()):
                    encoder.put(frame)
        except MediaStreamError:
            pass
        finally:  # the audio has ended: so does every subscriber's audio
            audio = [v for v in self._viewers if v.kind == "audio"]
            self.unsubscribe([*audio, *self._audio])

    def stop(self) -> None:
        """End the stream: every subscriber's tracks stop."""
        if self._relay is not None:
            self._relay.cancel()
        self.unsubscribe([*self._viewers, *self._frames, *self._audio])
