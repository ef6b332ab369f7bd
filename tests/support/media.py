"""Shared helpers of the ``streamvsr upscale`` tests (this module holds no tests).

Clips are written with PyAV (moving video, optionally a tone whose loudness ramps up with time so
that where a piece of audio came from can be told from its level), read back with PyAV, and
engines are wrapped to record (or interrupt) what the job asks of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from streamvsr.engine import BicubicEngine, FrameRequest

FPS = 25
SAMPLE_RATE = 44100


def tone(start: int, count: int, total: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples ``start .. start+count`` of a 440 Hz tone whose amplitude ramps 0 -> 0.8 over
    ``total`` samples: float32 in [-1, 1]."""
    n = np.arange(start, start + count)
    return (0.8 * n / total * np.sin(2 * np.pi * 440 * n / rate)).astype(np.float32)


def make_clip(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: int = FPS,
    audio: str | None = "aac",
    container_format: str | None = None,
    sample_rate: int = SAMPLE_RATE,
    video_delay: int = 0,
) -> Path:
    """Write ``frames`` (uint8 RGB, even sizes) as H.264 and, unless ``audio`` is None, a stereo
    track in codec ``audio`` ("aac" or "pcm_s16le") as long as the video. The audio starts at
    time 0, the video ``video_delay`` frames later."""
    height, width = frames[0].shape[:2]
    container = av.open(str(path), "w", format=container_format)
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    sound = None
    if audio is not None:
        sound = container.add_stream(audio, rate=sample_rate)
        sound.layout = "stereo"
        if audio == "pcm_s16le":
            sound.format = "s16"
    for index, pixels in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts, frame.time_base = video_delay + index, Fraction(1, fps)
        for packet in video.encode(frame):
            container.mux(packet)
    if sound is not None:
        total = round(len(frames) / fps * sample_rate)
        for start in range(0, total, 1024):
            mono = tone(start, min(1024, total - start), total, sample_rate)
            if audio == "pcm_s16le":
                interleaved = np.repeat((mono * 32767).astype(np.int16), 2)[None]
                chunk = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
            else:
                chunk = av.AudioFrame.from_ndarray(
                    np.stack([mono, mono]), format="fltp", layout="stereo"
                )
            chunk.sample_rate, chunk.pts = sample_rate, start
            chunk.time_base = Fraction(1, sample_rate)
            for packet in sound.encode(chunk):
                container.mux(packet)
    for stream in [video] + ([sound] if sound is not None else []):
        for packet in stream.encode():
            container.mux(packet)
    container.close()
    return path


@dataclass
class AudioTrack:
    codec: str
    sample_rate: int
    channels: int
    start: float  # time of the first decoded sample, seconds
    duration: float  # seconds
    samples: np.ndarray  # decoded, first channel, float


@dataclass
class Video:
    container: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    rate: Fraction
    times: list[float]  # presentation time of each frame, seconds
    container_duration: float
    frames: list[np.ndarray] = field(repr=False)
    audio: AudioTrack | None = None

    @property
    def duration(self) -> float:
        """From the first frame's start to the last frame's end."""
        return self.times[-1] - self.times[0] + float(1 / self.rate)


def read_video(path: Path) -> Video:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * stream.time_base))
        video = Video(
            container=container.format.name,
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rate=Fraction(stream.average_rate),
            times=times,
            container_duration=(container.duration or 0) / 1e6,
            frames=frames,
        )
    video.audio = read_audio(path)
    return video


def read_audio(path: Path) -> AudioTrack | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        chunks, first = [], None
        for frame in container.decode(stream):
            if first is None:
                first = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
            chunks.append(_first_channel(frame))
        samples = np.concatenate(chunks)
        rate = stream.codec_context.sample_rate
        if stream.duration:  # the container's word (excludes the encoder's priming samples)
            duration = float(stream.duration * stream.time_base)
        else:
            duration = len(samples) / rate
        return AudioTrack(
            codec=stream.codec_context.name,
            sample_rate=rate,
            channels=stream.codec_context.channels,
            start=first or 0.0,
            duration=duration,
            samples=samples.astype(np.float64),
        )


def _first_channel(frame: av.AudioFrame) -> np.ndarray:
    data = frame.to_ndarray()
    mono = data[0] if frame.format.is_planar else data[0, :: frame.layout.nb_channels]
    if mono.dtype.kind == "i":
        return mono / float(np.iinfo(mono.dtype).max + 1)
    return mono


def rms(track: AudioTrack, begin: float, end: float) -> float:
    """Loudness of ``track`` between two times of its timeline (seconds)."""
    first, last = ((t - track.start) * track.sample_rate for t in (begin, end))
    piece = track.samples[max(0, round(first)) : round(last)]
    return float(np.sqrt(np.mean(piece**2)))


def downscale(pixels: np.ndarray, factor: int = 4) -> np.ndarray:
    height, width = pixels.shape[:2]
    image = Image.fromarray(pixels).resize((width // factor, height // factor), Image.BOX)
    return np.asarray(image).astype(np.float64)


def nearest_frames(outputs: Sequence[np.ndarray], sources: Sequence[np.ndarray]) -> list[int]:
    """For each upscaled output frame, the index of the source frame it looks most like."""
    references = [s.astype(np.float64) for s in sources]
    return [int(np.argmin([np.mean((downscale(o) - r) ** 2) for r in references])) for o in outputs]


def bicubic_x4(pixels: np.ndarray) -> np.ndarray:
    """What the bicubic engine makes of one frame."""
    engine = BicubicEngine("cpu")
    [result] = engine.step([FrameRequest(engine.new_session(0), pixels)])
    return result.frame.numpy()


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def tree(root: Path) -> list[str]:
    """Every file and folder under ``root`` (hidden ones too), relative, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(str((Path(folder) / name).relative_to(root)))
    return sorted(found)


@dataclass
class Step:
    sessions: list[int]  # session number of each request (in order of first appearance)
    frame_indices: list[int]  # the request's state.frame_index
    fresh: list[bool]  # whether the request's state holds no previous frame


class RecordingEngine:
    """Wraps an engine: records every step (``launch`` or ``step``: which session, which frame
    index) and optionally raises ``KeyboardInterrupt`` once ``interrupt_after`` frames are done."""

    def __init__(self, inner, interrupt_after: int | None = None):
        self.inner = inner
        self.interrupt_after = interrupt_after
        self.steps: list[Step] = []
        self.generators: list = []  # kept alive, so identities are never reused
        self.frames_done = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _session(self, state) -> int:
        for number, generator in enumerate(self.generators):
            if generator is state.generator:
                return number
        self.generators.append(state.generator)
        return len(self.generators) - 1

    def step(self, requests, timer=None, pixel_format="rgb24"):
        return self.launch(requests, timer, pixel_format).results()

    def launch(self, requests, timer=None, pixel_format="rgb24"):
        if self.interrupt_after is not None and self.frames_done >= self.interrupt_after:
            raise KeyboardInterrupt
        self.steps.append(
            Step(
                [self._session(r.state) for r in requests],
                [r.state.frame_index for r in requests],
                [getattr(r.state, "prev_hr", None) is None for r in requests],
            )
        )
        pending = self.inner.launch(requests, timer, pixel_format)
        self.frames_done += len(requests)
        return pending

    def per_session(self) -> dict[int, list[int]]:
        """Frame indices each session was asked for, in order."""
        seen: dict[int, list[int]] = {}
        for step in self.steps:
            for session, index in zip(step.sessions, step.frame_indices):
                seen.setdefault(session, []).append(index)
        return seen


def tiny_flags(checkpoint: Path, raft: Path, flow_resolution: str = "lr") -> list[str]:
    return ["--engine", "stream-diffvsr", "--model", str(checkpoint), "--device", "cpu",
            "--dtype", "fp32", "--flow-model", "raft_small", "--flow-weights", str(raft),
            "--flow-resolution", flow_resolution]  # fmt: skip


BICUBIC = ["--engine", "bicubic", "--device", "cpu"]
