"""What ``streamvsr upscale`` reads: image sequences and video files, one frame at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UpscaleError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".flv", ".wmv", ".m4v", ".ts", ".mpg"}


@dataclass(frozen=True)
class FrameRange:
    start: int = 0
    stop: int | None = None  # exclusive

    def apply(self, count: int) -> range:
        stop = count if self.stop is None else min(self.stop, count)
        return range(min(self.start, stop), stop)


@dataclass
class ImageSequence:
    """Image files of one sequence; ``name`` is its folder under the output ("" = the top)."""

    name: str
    paths: list[Path]
    size: tuple[int, int]  # (width, height)

    def frames(self, frames: FrameRange) -> Iterator[tuple[str, np.ndarray]]:
        for index in frames.apply(len(self.paths)):
            path = self.paths[index]
            yield path.name, read_image(path, self.size)

    def count(self, frames: FrameRange) -> int:
        return len(frames.apply(len(self.paths)))


@dataclass
class VideoInfo:
    path: Path
    size: tuple[int, int]
    rate: Fraction
    time_base: Fraction
    frame_count: int  # from the container header; 0 when unknown
    has_audio: bool


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if size is not None and image.size != size:
                raise UpscaleError(
                    f"{path} is {image.size[0]}x{image.size[1]} but earlier frames of its "
                    f"sequence are {size[0]}x{size[1]}: the frames of one sequence must share a "
                    "size"
                )
            return np.asarray(image.convert("RGB"))
    except UpscaleError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UpscaleError(f"cannot read image {path}: {exc}") from exc


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise UpscaleError(f"cannot read image {path}: {exc}") from exc


def image_sequence(name: str, paths: Sequence[Path]) -> ImageSequence:
    """A sequence whose files all exist and share one size (checked from headers, cheaply)."""
    paths = sorted(paths, key=lambda p: p.name)
    size = _image_size(paths[0])
    for path in paths[1:]:
        other = _image_size(path)
        if other != size:
            raise UpscaleError(
                f"{path} is {other[0]}x{other[1]} but {paths[0].name} is {size[0]}x{size[1]}: "
                "the frames of one sequence must share a size"
            )
    return ImageSequence(name, list(paths), size)


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def find_sequences(inputs: Sequence[Path]) -> list[ImageSequence]:
    """Image sequences from a folder of sequence folders, one sequence folder, or image files."""
    for path in inputs:
        if not path.exists():
            raise UpscaleError(f"input {path} does not exist")
    if len(inputs) > 1 or inputs[0].is_file():
        bad = [p for p in inputs if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if bad:
            raise UpscaleError(f"{bad[0]} is not an image file (several inputs must be images)")
        return [image_sequence("", list(inputs))]
    folder = inputs[0]
    images = _images_in(folder)
    if images:
        return [image_sequence("", images)]
    sequences = [
        image_sequence(sub.name, _images_in(sub))
        for sub in sorted(p for p in folder.iterdir() if p.is_dir())
        if _images_in(sub)
    ]
    if not sequences:
        raise UpscaleError(
            f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no folders of "
            "images"
        )
    return sequences


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def probe_video(path: Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UpscaleError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(30)
            return VideoInfo(
                path=path,
                size=(stream.codec_context.width, stream.codec_context.height),
                rate=Fraction(rate),
                time_base=Fraction(stream.time_base or Fraction(1, 90_000)),
                frame_count=stream.frames or 0,
                has_audio=bool(container.streams.audio),
            )
    except UpscaleError:
        raise
    except (av.FFmpegError, OSError) as exc:
        raise UpscaleError(f"cannot read video {path}: {exc}") from exc


def video_frames(info: VideoInfo, frames: FrameRange) -> Iterator[tuple[int, np.ndarray]]:
    """(pts, RGB frame) of the frames in range, decoded one at a time."""
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if frames.stop is not None and index >= frames.stop:
                    break
                if index >= frames.start:
                    pts = frame.pts if frame.pts is not None else index
                    yield pts, frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, OSError) as exc:
        raise UpscaleError(f"cannot decode video {info.path}: {exc}") from exc
