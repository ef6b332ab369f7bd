"""One publisher, many viewers: audio frames copied to each viewer's bounded queue."""

from __future__ import annotations

import asyncio
import contextlib

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


class FanoutTrack(MediaStreamTrack):
    """A viewer's copy of a published track; the oldest frames go when the viewer falls behind."""

    def __init__(self, kind: str, depth: int):
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=depth)

    def offer(self, frame) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(frame)

    async def recv(self):
        frame = await self.queue.get()
        if frame is None or self.readyState != "live":
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class Fanout:
    """Reads a source track for as long as it lives (so nothing piles up) and copies every frame
    to the current subscribers. Timestamps are kept, so A/V stay in sync for viewers."""

    def __init__(self, source: MediaStreamTrack, depth: int = 25):
        self.source = source
        self.depth = depth
        self.subscribers: set[FanoutTrack] = set()

    def subscribe(self) -> FanoutTrack:
        track = FanoutTrack(self.source.kind, self.depth)
        self.subscribers.add(track)
        return track

    def unsubscribe(self, track: FanoutTrack) -> None:
        self.subscribers.discard(track)

    async def run(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                for track in list(self.subscribers):
                    track.offer(frame)
        except MediaStreamError:
            pass
        finally:
            for track in list(self.subscribers):
                track.stop()
