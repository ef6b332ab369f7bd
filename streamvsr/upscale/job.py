"""Running an upscale: sources -> engine (sessions batched together) -> sinks, a frame at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from streamvsr.engine import Engine
from streamvsr.engine.lookahead import LookaheadSession, advance

from .errors import UpscaleError
from .sinks import Staged, VideoWriter, write_png
from .sources import (
    FrameRange,
    ImageSequence,
    VideoInfo,
    find_sequences,
    is_video,
    probe_video,
    video_frames,
)

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


@dataclass
class UpscaleOptions:
    inputs: list[Path]
    output: Path | None = None
    overwrite: bool = False
    frames: FrameRange = field(default_factory=FrameRange)
    sessions: int = 1
    input_size: tuple[int, int] | None = None  # (width, height): resize frames before the engine
    output_size: tuple[int, int] | None = None  # resize the engine's output
    filter: str = "lanczos"
    save_frames: bool = False
    codec: str = "libx264"
    crf: int = 18
    preset: str = "medium"
    seed: int = 0
    quiet: bool = False


def _resize(pixels: np.ndarray, size: tuple[int, int] | None, filter: str) -> np.ndarray:
    if size is None or (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, FILTERS[filter]))


def default_output(first_input: Path) -> Path:
    if is_video(first_input):
        return first_input.with_name(f"{first_input.stem}_x4.mp4")
    base = first_input if first_input.is_dir() else first_input.parent
    return base.with_name(f"{base.name}_x4")


def prepare_upscale(options: UpscaleOptions) -> Callable[[Engine], dict[str, Any]]:
    """Check the inputs and the output before any model is loaded; returns the job to run.

    Raises ``UpscaleError`` for a missing, empty, unreadable or inconsistent input and for an
    output that exists (without ``overwrite``) or cannot be written.
    """
    if not options.inputs:
        raise UpscaleError("no input given")
    if options.filter not in FILTERS:
        raise UpscaleError(f"unknown filter {options.filter!r} (use {', '.join(FILTERS)})")
    if options.sessions < 1:
        raise UpscaleError("--sessions must be at least 1")
    first = options.inputs[0]
    output = options.output or default_output(first)
    if len(options.inputs) == 1 and is_video(first):
        info = probe_video(first)
        _check_video_output(output, options)
        return lambda engine: _run_video(engine, options, info, output)
    sequences = find_sequences(options.inputs)
    Staged(output, options.overwrite)  # checks only; the job stages its own
    return lambda engine: _run_images(engine, options, sequences, output)


def run_upscale(engine: Engine, options: UpscaleOptions) -> dict[str, Any]:
    """Upscale everything in ``options``; returns a summary. Raises ``UpscaleError``."""
    return prepare_upscale(options)(engine)


def _check_video_output(output: Path, options: UpscaleOptions) -> None:
    if output.suffix.lower() != ".mp4":
        raise UpscaleError(f"video output must be an .mp4 file, got {output}")
    if options.output_size and any(side % 2 for side in options.output_size):
        width, height = options.output_size
        raise UpscaleError(f"--output-size {width}x{height}: H.264 (yuv420p) needs even sides")
    if not 0 <= options.crf <= 51:
        raise UpscaleError(f"--crf must be between 0 and 51, got {options.crf}")
    Staged(output, options.overwrite)
    if options.save_frames:
        Staged(output.with_name(f"{output.stem}_frames"), options.overwrite)


# --- image sequences -------------------------------------------------------------------------


def _run_images(engine, options: UpscaleOptions, sequences: list[ImageSequence], output: Path):
    staged = Staged(output, options.overwrite)
    total = sum(s.count(options.frames) for s in sequences)
    started = time.perf_counter()
    try:
        staged.temp.mkdir()
        with _progress(total, options) as bar:
            _upscale_sequences(engine, options, sequences, staged.temp, bar)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    return _summary(total, started, [output], len(sequences))


def _upscale_sequences(engine, options, sequences, root: Path, bar) -> None:
    """Run up to ``options.sessions`` sequences at once, one batched engine step per frame."""
    waiting = list(sequences)
    active: list[LookaheadSession] = []
    if options.input_size is not None:  # else each sequence's size shows with its first frame
        width, height = options.input_size
        engine.warm_up([(height, width)], range(1, options.sessions + 1))
    while waiting or active:
        while waiting and len(active) < options.sessions:
            sequence = waiting.pop(0)
            frames = (
                (name, _resize(pixels, options.input_size, options.filter))
                for name, pixels in sequence.frames(options.frames)
            )  # each sequence: same seed, own chain
            active.append(LookaheadSession.start(engine, frames, options.seed, payload=sequence))
        active = [s for s in active if not s.finished]
        if not active:
            continue
        for stream, name, frame in advance(engine, active):
            pixels = _resize(frame.numpy(), options.output_size, options.filter)
            write_png(root / stream.payload.name, name, pixels)
            bar.update(1)


# --- video files -----------------------------------------------------------------------------


def _run_video(engine, options: UpscaleOptions, info: VideoInfo, output: Path) -> dict[str, Any]:
    staged = Staged(output, options.overwrite)
    frames_dir = output.with_name(f"{output.stem}_frames")
    staged_frames = Staged(frames_dir, options.overwrite) if options.save_frames else None
    width, height = options.input_size or info.size
    size = options.output_size or (width * engine.scale, height * engine.scale)
    expected = len(options.frames.apply(info.frame_count)) if info.frame_count else None
    started = time.perf_counter()
    writer = None
    count = 0
    try:
        writer = VideoWriter(
            staged.temp, size, info.rate, info.time_base, options.codec, options.crf,
            options.preset, info.path if info.has_audio else None,
            trim_audio=options.frames.stop is not None,
        )  # fmt: skip
        if staged_frames is not None:
            staged_frames.temp.mkdir()
        engine.warm_up([(height, width)], [1])  # e.g. compile for this size, before timing
        frames = (
            (pts, _resize(pixels, options.input_size, options.filter))
            for pts, pixels in video_frames(info, options.frames)
        )
        stream = LookaheadSession.start(engine, frames, options.seed)
        with _progress(expected, options) as bar:
            while not stream.finished:
                [(_, pts, frame)] = advance(engine, [stream])
                hr = _resize(frame.numpy(), options.output_size, options.filter)
                writer.write(hr, pts)
                if staged_frames is not None:
                    write_png(staged_frames.temp, f"frame_{count:06d}", hr)
                count += 1
                bar.update(1)
        if count == 0:
            raise UpscaleError(f"{info.path}: no frames in the chosen range")
        writer.close()
        writer = None
        staged.commit()
        if staged_frames is not None:
            staged_frames.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        staged.discard()
        if staged_frames is not None:
            staged_frames.discard()
        raise
    outputs = [output] + ([frames_dir] if options.save_frames else [])
    return _summary(count, started, outputs, 1)


def _progress(total: int | None, options: UpscaleOptions) -> tqdm:
    return tqdm(total=total, unit="frame", disable=options.quiet, dynamic_ncols=True,
                desc="upscaling")  # fmt: skip


def _summary(frames: int, started: float, outputs: list[Path], sequences: int) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    return {
        "frames": frames,
        "sequences": sequences,
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 3) if seconds > 0 else None,
        "outputs": [str(p) for p in outputs],
    }
