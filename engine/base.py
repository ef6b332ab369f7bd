"""What every engine offers: advance many streams by one frame each."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .prefetch import PrefetchedFlow
from .state import SessionState
from .timing import StageTimer

T = TypeVar("T")


class PixelFormat(str, Enum):
    """How an HR frame's bytes are laid out: the contract between an engine and whoever encodes
    its frames. Values are FFmpeg's names, as ``av.VideoFrame.from_ndarray`` takes them."""

    RGB24 = "rgb24"  # (H, W, 3) interleaved RGB
    YUV420P = "yuv420p"  # (3H/2, W): Y rows, then U, then V (BT.601 limited range, as swscale)


@dataclass
class FrameRequest:
    """One LR frame of one stream: RGB uint8, shape (H, W, 3), numpy or torch.

    ``noise`` optionally fixes the frame's initial latent (1, 4, H, W) for exact reproduction.
    ``flow`` is this frame's flow started ahead with ``engine.prefetch_flow(previous, frame)``,
    where ``previous`` is the frame of this stream's last step (the caller guarantees it).
    """

    state: SessionState
    frame: np.ndarray | torch.Tensor
    noise: torch.Tensor | None = None
    flow: PrefetchedFlow | None = None


@dataclass
class FrameResult:
    """The stream's updated state and its HR frame on the CPU, uint8 in ``pixel_format``: RGB
    (4H, 4W, 3), or YUV 4:2:0 planes (6H, 4W) when the step was asked for YUV and could do it."""

    state: SessionState
    frame: torch.Tensor
    pixel_format: PixelFormat = PixelFormat.RGB24


class Engine(Protocol):
    name: str
    scale: int
    device: torch.device
    dtype: torch.dtype

    def new_session(self, seed: int | None = None) -> SessionState: ...

    def step(
        self,
        requests: Sequence[FrameRequest],
        timer: StageTimer | None = None,
        pixel_format: PixelFormat = PixelFormat.RGB24,
    ) -> list[FrameResult]: ...

    def launch(
        self,
        requests: Sequence[FrameRequest],
        timer: StageTimer | None = None,
        pixel_format: PixelFormat = PixelFormat.RGB24,
    ) -> PendingStep:
        """``step`` without waiting for the GPU: queue the work, collect with ``results()``.
        ``PixelFormat.YUV420P`` asks for frames as YUV 4:2:0 planes where that is cheap (on a
        GPU); each result says which format its frame is in."""

    def prefetch_flow(self, previous: np.ndarray, frame: np.ndarray) -> PrefetchedFlow | None:
        """Start the flow between two consecutive frames of a stream (None: nothing to start)."""

    def warm_up(self, sizes: Iterable[tuple[int, int]], batch_sizes: Iterable[int]) -> None:
        """Get ready for batches of these (height, width) LR sizes and sizes (e.g. compile)."""


def as_frame_tensor(frame: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A uint8 (H, W, 3) RGB frame as a CPU tensor (read-only arrays, e.g. from PIL, are copied)."""
    if isinstance(frame, np.ndarray):
        if not frame.flags.writeable or not frame.flags.c_contiguous:
            frame = np.array(frame, order="C")
        frame = torch.from_numpy(frame)
    if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"frames must be uint8 RGB arrays of shape (H, W, 3), got {tuple(frame.shape)} "
            f"{frame.dtype}"
        )
    return frame


def to_model_input(frames: Sequence[np.ndarray | torch.Tensor], device, dtype) -> torch.Tensor:
    """Stack uint8 HWC RGB frames into a (B, 3, H, W) tensor in [-1, 1] on ``device``.

    For CUDA the frames are stacked straight into pinned memory and uploaded asynchronously (the
    caching host allocator keeps the pinned block until the copy is done); conversion runs on the
    GPU.
    """
    tensors = [as_frame_tensor(f) for f in frames]
    if torch.device(device).type == "cuda":
        shape = (len(tensors), *tensors[0].shape)
        pinned = torch.stack(tensors, out=torch.empty(shape, dtype=torch.uint8, pin_memory=True))
        batch = pinned.to(device, non_blocking=True)
    else:
        batch = torch.stack(tensors).to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1)


# RGB -> Y'CbCr, BT.601 limited range: what swscale (and so PyAV's reformat) does by default.
_BT601 = (
    (0.256788, 0.504129, 0.097906, 16.0),
    (-0.148223, -0.290993, 0.439216, 128.0),
    (0.439216, -0.367788, -0.071427, 128.0),
)


def to_yuv420p(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 255] (H, W even) -> (B, 3H/2, W) planar YUV 4:2:0, the layout of
    ``av.VideoFrame.from_ndarray(..., format="yuv420p")``: Y rows, then U, then V (each chroma
    plane, averaged over 2x2 pixels, packed into rows of width W)."""
    batch, _, height, width = rgb.shape
    red, green, blue = rgb.unbind(1)
    # Python-float coefficients: a tensor of them would be a blocking host-to-device copy per call.
    y, u, v = (r * red + g * green + b * blue + offset for r, g, b, offset in _BT601)
    u, v = (
        F.avg_pool2d(plane.unsqueeze(1), 2).reshape(batch, height // 4, width) for plane in (u, v)
    )
    return torch.cat([y, u, v], dim=1)


class Download:
    """(B, 3, H, W) images in [-1, 1] on their way to the host as uint8 frames: (H, W, 3) RGB, or
    (3H/2, W) YUV 4:2:0 planes for ``PixelFormat.YUV420P`` (what video encoders take: no
    conversion on the CPU, half the bytes to copy); ``pixel_format`` says which it became (odd
    sizes stay RGB).

    On CUDA the copy goes into a pinned buffer, fresh per call (so results never alias the next
    step's; cheap once the caching host allocator has a block of that size), without waiting:
    ``frames()`` is the step's one host synchronisation, so the caller can queue more GPU work
    (e.g. the next frame's flow) before it.
    """

    def __init__(self, images: torch.Tensor, pixel_format: PixelFormat = PixelFormat.RGB24):
        pixel_format = PixelFormat(pixel_format)  # ValueError names the accepted values
        rgb = (images.float() / 2 + 0.5).clamp(0, 1) * 255
        self._done = None
        even = not (images.shape[-1] % 2 or images.shape[-2] % 2)
        self.pixel_format = (
            PixelFormat.YUV420P
            if pixel_format is PixelFormat.YUV420P and even
            else PixelFormat.RGB24
        )
        if self.pixel_format is PixelFormat.YUV420P:
            pixels = to_yuv420p(rgb).round().clamp(0, 255).to(torch.uint8)
        else:
            # channels_last makes the (B, H, W, 3) view contiguous: one plain copy to the host.
            pixels = rgb.round().to(torch.uint8, memory_format=torch.channels_last)
            pixels = pixels.permute(0, 2, 3, 1)
        if pixels.device.type != "cuda":
            self._host = pixels.cpu()
            return
        self._host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
        self._host.copy_(pixels, non_blocking=True)
        self._done = torch.cuda.Event()
        self._done.record(torch.cuda.current_stream(pixels.device))

    def frames(self) -> list[torch.Tensor]:
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return list(self._host)


@dataclass
class LaunchedFrame:
    """One request of a launched step: the stream's new state and where its frame arrives."""

    state: SessionState
    download: Download
    row: int


class PendingStep:
    """A step whose GPU work is queued; ``results()`` waits for it (in the requests' order)."""

    def __init__(self, frames: Sequence[LaunchedFrame | FrameResult]):
        self._frames = list(frames)

    @property
    def states(self) -> list[SessionState]:
        """The streams' new states, without waiting (their tensors may still be computed: use
        them only for more GPU work on the same stream)."""
        return [frame.state for frame in self._frames]

    def results(self) -> list[FrameResult]:
        return [
            FrameResult(f.state, f.download.frames()[f.row], f.download.pixel_format)
            if isinstance(f, LaunchedFrame)
            else f
            for f in self._frames
        ]


def to_uint8_frames(images: torch.Tensor) -> list[torch.Tensor]:
    """(B, 3, H, W) images in [-1, 1] -> list of uint8 (H, W, 3) CPU tensors."""
    return Download(images).frames()


def step_by_size(
    requests: Sequence[FrameRequest],
    step_group: Callable[[list[FrameRequest]], list[FrameResult]],
) -> list[FrameResult]:
    """Run ``step_group`` once per frame size (only same-size frames share a batch); results
    come back in the order of ``requests``."""
    return step_grouped(requests, lambda request: tuple(request.frame.shape[:2]), step_group)


def step_grouped(
    requests: Sequence[FrameRequest],
    key: Callable[[FrameRequest], Hashable],
    step_group: Callable[[list[FrameRequest]], list[T]],
) -> list[T]:
    """Run ``step_group`` once per group of requests with equal ``key``; results come back in the
    order of ``requests``."""
    groups: dict[Hashable, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(key(request), []).append(i)
    results: list[T | None] = [None] * len(requests)
    for indices in groups.values():
        for i, result in zip(indices, step_group([requests[i] for i in indices]), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]
