"""Encode once per stream: a stream's WebRTC viewers share one encoder per codec.

aiortc gives every sender an encoder of its own, so N viewers of a stream would cost N encodes of
each upscaled frame. Here each upscaled frame goes to one ``StreamEncoder`` per negotiated codec,
which encodes it once (in the loop's executor, as aiortc's senders do) and hands the RTP payloads
to every viewer's ``ViewerTrack``. The viewer's sender sends them under its own SSRC, sequence
numbers and timestamp origin: the encoder aiortc gives it (``encoders.SenderEncoder``) passes a
``Delivery`` through instead of encoding.

Every viewer starts at a keyframe and then gets every frame (a decoder needs the frames its next
one refers to): a viewer gets nothing until its connection is up (its sender asks for a frame),
then waits for the next keyframe; one that falls ``VIEWER_DEPTH`` frames behind drops them and
waits for the next one. Both ask for a keyframe, as does a viewer's PLI or FIR. Forced keyframes
come at most every ``KEYFRAME_INTERVAL_S`` per stream and codec, so that viewers joining or losing
packets cannot turn the stream into keyframes only; a request that comes sooner is served when
that interval has passed.

Audio is shared the same way (``AudioStreamEncoder``): each received frame is encoded once per
codec, which also spares every viewer's sender aiortc's per-frame audio level (a Python loop over
the samples, on the event loop).

Bitrate: by default the stream follows its most constrained viewer, the lowest receiver estimate
(REMB) among its viewers, clamped to ``min_bitrate``..``max_bitrate``. One viewer on a poor link
lowers the quality for all, but no viewer is sent more than it said it can take. Decreases apply
at once, increases at most every ``RAISE_INTERVAL_S`` (each change restarts the encoder with a
keyframe). ``viewer_bitrate`` fixes the rate for every viewer instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

VIEWER_DEPTH = 8  # encoded video frames a viewer's sender may fall behind by
AUDIO_DEPTH = 25  # encoded audio frames (0.5 s of 20 ms Opus frames)
KEYFRAME_INTERVAL_S = 1.0  # forced keyframes per stream and codec, at most one per this
RAISE_INTERVAL_S = 3.0  # bitrate increases, at most one per this

H264_IDR, H264_STAP_A, H264_FU_A = 5, 24, 28  # NAL unit types (RFC 6184)


@dataclass(frozen=True)
class EncodedFrame:
    """One frame as its stream's encoder made it: RTP payloads and the 90 kHz timestamp."""

    payloads: list[bytes]
    timestamp: int
    keyframe: bool


@dataclass(frozen=True)
class Delivery:
    """An encoded frame handed to one viewer's sender (which reports its REMB to ``viewer``)."""

    frame: EncodedFrame
    viewer: ViewerTrack


def is_keyframe(mime: str, payloads: list[bytes]) -> bool:
    """Whether these RTP payloads start a decodable picture: an H.264 IDR, a VP8 key frame."""
    if not payloads:
        return False
    if mime == "video/vp8":
        _, data = VpxPayloadDescriptor.parse(payloads[0])
        return bool(data) and not data[0] & 0x01  # the frame tag's P bit: 0 for key frames
    return any(H264_IDR in _h264_nal_types(p) for p in payloads if p)


def _h264_nal_types(payload: bytes) -> list[int]:
    kind = payload[0] & 0x1F
    if kind == H264_FU_A:
        return [payload[1] & 0x1F] if len(payload) > 1 else []
    if kind != H264_STAP_A:
        return [kind]
    types, at = [], 1
    while at + 2 < len(payload):
        size = int.from_bytes(payload[at : at + 2], "big")
        types.append(payload[at + 2] & 0x1F)
        at += 2 + size
    return types


class SharedEncoder:
    """What the viewers of a stream that negotiated one codec share: the encoded frames."""

    def __init__(self, mime: str):
        self.mime = mime
        self.viewers: set[ViewerTrack] = set()
        self._closed = False

    def join(self, viewer: ViewerTrack) -> None:
        self.viewers.add(viewer)

    def leave(self, viewer: ViewerTrack) -> None:
        self.viewers.discard(viewer)

    def request_keyframe(self) -> None:
        """Only video has keyframes to ask for."""

    def bitrate_changed(self) -> None:
        """Only video follows its viewers' estimates."""

    def close(self) -> None:
        self._closed = True

    def _hand_out(self, frame: EncodedFrame) -> None:
        for viewer in list(self.viewers):
            viewer.deliver(frame)


class AudioStreamEncoder(SharedEncoder):
    """A stream's audio for one codec (Opus, G.711): each received frame encoded once, in order,
    on the event loop (a 20 ms Opus frame takes ~0.1 ms), for every viewer."""

    def __init__(self, mime: str, encoder):
        super().__init__(mime)
        self._encoder = encoder  # aiortc's: encode(frame) -> (payloads, timestamp)
        self._failed = False

    def put(self, frame: av.AudioFrame) -> None:
        if self._closed or not self.viewers:
            return
        try:
            payloads, timestamp = self._encoder.encode(frame)
        except Exception:  # a frame it cannot take: the stream and the egresses go on
            if not self._failed:
                log.exception("%s encoder failed on a frame (logged once)", self.mime)
            self._failed = True
            return
        if payloads:
            self._hand_out(EncodedFrame(payloads, timestamp, keyframe=True))


class StreamEncoder(SharedEncoder):
    """One stream's video encoder for one codec, shared by the viewers that negotiated it.

    Takes the newest upscaled frame (``put``, on the event loop): one frame is encoded at a time
    and a frame that waits is replaced by a newer one (counted as ``encoder_busy``).
    """

    def __init__(
        self,
        mime: str,
        encoder,
        metrics: Metrics,
        min_bitrate: int,
        max_bitrate: int,
        fixed_bitrate: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(mime)
        self._encoder = encoder  # aiortc's interface: encode(frame, force_keyframe), target_bitrate
        self._metrics = metrics
        self._limits = (min_bitrate, max_bitrate)
        self._fixed = fixed_bitrate
        self._clock = clock
        self._next: av.VideoFrame | None = None
        self._encoding = False
        self._taken = False  # a frame was taken: the one that waits now replaces an unsent one
        self._keyframe_wanted = False
        self._keyframe_at = -math.inf  # when the last keyframe was forced
        self._raised_at = -math.inf
        if fixed_bitrate:
            encoder.target_bitrate = fixed_bitrate

    # --- viewers ---

    def leave(self, viewer: ViewerTrack) -> None:
        super().leave(viewer)
        self.bitrate_changed()

    def request_keyframe(self) -> None:
        """Force a keyframe soon: with the next frame, or once ``KEYFRAME_INTERVAL_S`` has passed
        since the last forced one."""
        self._keyframe_wanted = True

    def bitrate_changed(self) -> None:
        """A viewer's estimate changed (or a viewer left): follow the lowest (see the module)."""
        if self._fixed:
            return
        estimates = [v.bitrate for v in self.viewers if v.bitrate is not None]
        if not estimates:
            return
        low, high = self._limits
        target = max(low, min(min(estimates), high))
        current = self._encoder.target_bitrate
        now = self._clock()
        if target > current and now - self._raised_at < RAISE_INTERVAL_S:
            return
        if target > current:
            self._raised_at = now
        self._encoder.target_bitrate = target

    # --- frames ---

    def behind(self, frame_coming: bool) -> bool:
        """Whether the encoder is busy and its next frame is already here (or ``frame_coming``):
        a frame upscaled now would only replace that one."""
        return self._encoding and (self._next is not None or frame_coming)

    def put(self, frame: av.VideoFrame, received_at: float) -> None:
        if self._next is not None and self._taken:
            self._metrics.frames_dropped.labels("encoder_busy").inc()
        frame.opaque = received_at  # for the encoder's end-to-end latency (TimedEncoder)
        self._next = frame
        if not self._encoding:
            self._encode_next()

    def close(self) -> None:
        super().close()
        self._next = None

    def _encode_next(self) -> None:
        frame, self._next = self._next, None
        if frame is None or self._closed:
            return
        self._encoding = self._taken = True
        self._metrics.frame_latency.observe(time.monotonic() - frame.opaque)
        force = self._keyframe_wanted and self._clock() - self._keyframe_at >= KEYFRAME_INTERVAL_S
        if force:
            self._keyframe_wanted, self._keyframe_at = False, self._clock()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, self._encoder.encode, frame, force)
        job.add_done_callback(self._encoded)

    def _encoded(self, job: asyncio.Future) -> None:
        self._encoding = False
        try:
            payloads, timestamp = job.result()
        except Exception:
            log.exception("%s encoder failed on a frame; it goes on with the next", self.mime)
            payloads, timestamp = [], 0
        if payloads and not self._closed:
            self._hand_out(EncodedFrame(payloads, timestamp, is_keyframe(self.mime, payloads)))
        self._encode_next()


class ViewerTrack(MediaStreamTrack):
    """A viewer's upscaled video or audio (``kind``): the encoded frames of its stream's encoder
    for the codec its connection negotiated (``use``), queued for its sender from a keyframe on
    (every audio frame is one)."""

    def __init__(
        self, kind: str, join: Callable[[ViewerTrack, str], SharedEncoder], metrics: Metrics
    ):
        super().__init__()
        self.kind = kind
        self._join = join
        self._metrics = metrics
        self._depth = VIEWER_DEPTH if kind == "video" else AUDIO_DEPTH
        self.encoder: SharedEncoder | None = None
        self.bitrate: int | None = None  # its receiver's estimate (REMB), once it sent one
        self.on_sent: Callable[[], None] | None = None  # called per frame its sender takes
        self._queue: deque[EncodedFrame] = deque()
        self._ready = asyncio.Event()
        self._started = False  # its sender asked for a frame: its connection is up
        self._synced = False  # it had a keyframe and every frame since

    def use(self, mime: str) -> None:
        """Take the frames of the stream's encoder for ``mime`` (the negotiated codec)."""
        if self.readyState == "live":
            self.encoder = self._join(self, mime.lower())

    def deliver(self, frame: EncodedFrame) -> None:
        if not self._started or self.readyState != "live":
            return  # nobody reads it yet (still connecting), or any more: nothing piles up
        if len(self._queue) >= self._depth:
            self._fell_behind()
        if not self._synced and not frame.keyframe:
            return
        self._synced = True
        self._queue.append(frame)
        self._ready.set()

    def _fell_behind(self) -> None:
        if self.kind == "audio":  # each audio frame decodes on its own: only the oldest goes
            self._queue.popleft()
            return
        # Video frames refer to earlier ones: drop them all and start again at a keyframe.
        self._metrics.frames_dropped.labels("viewer_behind").inc(len(self._queue))
        self._queue.clear()
        self._synced = False
        self.request_keyframe()

    def request_keyframe(self) -> None:
        """Its decoder needs a keyframe (a PLI or FIR from the viewer, or a gap here)."""
        if self.encoder is not None:
            self.encoder.request_keyframe()

    def report_bitrate(self, bitrate: int) -> None:
        """Its receiver's estimate (REMB), from its sender."""
        self.bitrate = bitrate
        if self.encoder is not None:
            self.encoder.bitrate_changed()

    async def recv(self) -> Delivery:
        if not self._started:  # the connection is up: start at the next keyframe
            self._started = True
            self.request_keyframe()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.kind == "video":
            self._metrics.frames_sent.inc()
            if self.on_sent is not None:
                self.on_sent()
        return Delivery(self._queue.popleft(), self)

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv() so that it ends
