"""A publisher's fan-out: subscribers come and go, a slow one drops its oldest audio, and stopping
the publisher ends every subscriber's tracks (no network)."""

from __future__ import annotations

import asyncio

import av
import pytest
from aiortc import AudioStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamvsr.server.metrics import Metrics
from streamvsr.server.publisher import Publisher
from streamvsr.server.tracks import UpscaledTrack


class QueuedAudio(MediaStreamTrack):
    """An audio source that yields the frames the test pushes; ``None`` ends it."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue()

    def push(self, pts: int | None) -> None:
        if pts is None:
            self.queue.put_nowait(None)
            return
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.pts = pts
        self.queue.put_nowait(frame)

    async def recv(self):
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


async def test_subscribe_and_unsubscribe() -> None:
    publisher = Publisher(Metrics())
    [video_only] = publisher.subscribe()  # no audio yet: only video
    assert isinstance(video_only, UpscaledTrack)
    publisher.publish_audio(QueuedAudio())
    video, audio = publisher.subscribe()
    assert (video.kind, audio.kind) == ("video", "audio")
    assert set(publisher.outputs) == {video_only, video}

    publisher.unsubscribe([video, audio])
    assert publisher.outputs == (video_only,)
    assert video.readyState == audio.readyState == "ended"
    assert video_only.readyState == "live"
    publisher.stop()


async def test_a_slow_subscriber_drops_its_oldest_audio() -> None:
    source = QueuedAudio()
    publisher = Publisher(Metrics(), audio_depth=3)
    publisher.publish_audio(source)
    _, fast = publisher.subscribe()
    _, slow = publisher.subscribe()
    for pts in range(10):
        source.push(pts)
        assert (await asyncio.wait_for(fast.recv(), 1)).pts == pts
    assert [(await slow.recv()).pts for _ in range(3)] == [7, 8, 9]

    source.push(None)  # the audio ends: so do the copies, the video goes on
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(slow.recv(), 1)
    assert fast.readyState == "ended"
    assert all(track.readyState == "live" for track in publisher.outputs)
    publisher.stop()


async def test_stop_ends_every_subscriber() -> None:
    publisher = Publisher(Metrics())
    publisher.publish_audio(AudioStreamTrack())  # aiortc's silence, one frame per 20 ms
    video, audio = publisher.subscribe()
    await asyncio.wait_for(audio.recv(), 1)
    waiting = asyncio.create_task(video.recv())  # no upscaled frame comes: it waits
    await asyncio.sleep(0)
    publisher.stop()
    for ended in (waiting, audio.recv()):
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(ended, 1)
    assert publisher.outputs == ()
