"""A publisher's fan-out: subscribers come and go, a slow one drops its oldest audio, and stopping
the publisher ends every subscriber's tracks (no network)."""

from __future__ import annotations

import asyncio
import fractions

import av
import pytest
from aiortc import AudioStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamvsr.server.metrics import Metrics
from streamvsr.server.publisher import Publisher
from streamvsr.server.stream_encoding import AUDIO_DEPTH
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
        frame.pts, frame.sample_rate, frame.time_base = pts, 48000, fractions.Fraction(1, 48000)
        self.queue.put_nowait(frame)

    async def recv(self):
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


async def test_subscribe_and_unsubscribe() -> None:
    publisher = Publisher(Metrics())
    [video_only] = publisher.subscribe_frames()  # no audio yet: only video
    assert isinstance(video_only, UpscaledTrack)
    publisher.publish_audio(QueuedAudio())
    video, audio = publisher.subscribe_frames()
    assert (video.kind, audio.kind) == ("video", "audio")
    assert set(publisher.outputs) == {video_only, video}

    publisher.unsubscribe([video, audio])
    assert publisher.outputs == (video_only,)
    assert video.readyState == audio.readyState == "ended"
    assert video_only.readyState == "live"
    publisher.stop()


async def test_viewers_of_a_codec_share_one_encoder_which_ends_with_the_last() -> None:
    publisher = Publisher(Metrics())
    viewers = [publisher.subscribe()[0] for _ in range(3)]
    for viewer, codec in zip(viewers, ("video/H264", "video/h264", "video/VP8")):
        viewer.use(codec)
    h264, vp8 = sorted(publisher.outputs, key=lambda e: e.mime)
    assert (h264.mime, vp8.mime) == ("video/h264", "video/vp8")
    assert h264.viewers == set(viewers[:2]) and vp8.viewers == {viewers[2]}

    publisher.unsubscribe([viewers[0], viewers[2]])
    assert publisher.outputs == (h264,) and h264.viewers == {viewers[1]}
    publisher.unsubscribe([viewers[1]])
    assert publisher.outputs == ()
    assert all(viewer.readyState == "ended" for viewer in viewers)
    publisher.stop()


async def test_a_slow_subscriber_drops_its_oldest_audio() -> None:
    source = QueuedAudio()
    publisher = Publisher(Metrics(), audio_depth=3)
    publisher.publish_audio(source)
    _, fast = publisher.subscribe_frames()
    _, slow = publisher.subscribe_frames()
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
    video, audio = publisher.subscribe_frames()
    viewer_video, viewer_audio = publisher.subscribe()
    viewer_audio.use("audio/opus")
    await asyncio.wait_for(audio.recv(), 1)
    await asyncio.wait_for(viewer_audio.recv(), 1)
    waiting = asyncio.create_task(video.recv())  # no upscaled frame comes: it waits
    await asyncio.sleep(0)
    publisher.stop()
    for ended in (waiting, audio.recv(), viewer_video.recv(), viewer_audio.recv()):
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(ended, 1)
    assert publisher.outputs == ()


async def test_audio_viewers_share_one_encode_and_a_slow_one_drops_its_oldest() -> None:
    source = QueuedAudio()
    publisher = Publisher(Metrics())
    publisher.publish_audio(source)
    tracks = [publisher.subscribe()[1] for _ in range(2)]
    for track in tracks:
        track.use("audio/OPUS")
    fast, slow = tracks
    assert fast.encoder is slow.encoder  # one Opus encoder for the stream
    # Both connected: their senders ask for frames; the slow one takes one, then stalls.
    first = asyncio.create_task(slow.recv())
    for pts in range(40):
        receiving = asyncio.create_task(fast.recv())
        await asyncio.sleep(0)
        source.push(pts * 960)
        delivery = await asyncio.wait_for(receiving, 1)
        assert delivery.frame.payloads and delivery.viewer is fast
    assert (await first).viewer is slow
    timestamps = [(await slow.recv()).frame.timestamp for _ in range(AUDIO_DEPTH)]
    assert len(set(timestamps)) == AUDIO_DEPTH  # the newest 25 frames, in order
    assert timestamps == sorted(timestamps)
    assert (await first).frame.timestamp < timestamps[0] - 960  # older ones were dropped
    publisher.stop()
