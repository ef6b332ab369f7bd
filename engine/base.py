"""What every engine offers: advance many streams by one frame each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .state import SessionState
from .timing import StageTimer


@dataclass
class FrameRequest:
    """One LR frame of one stream: RGB uint8, shape (H, W, 3), numpy or torch.

    ``noise`` optionally fixes the frame's initial latent (1, 4, H, W) for exact reproduction.
    """

    state: SessionState
    frame: np.ndarray | torch.Tensor
    noise: torch.Tensor | None = None


@dataclass
class FrameResult:
    """The stream's updated state and its HR frame: RGB uint8 (4H, 4W, 3) on the CPU."""

    state: SessionState
    frame: torch.Tensor


class Engine(Protocol):
    name: str
    scale: int
    device: torch.device
    dtype: torch.dtype

    def new_session(self, seed: int | None = None) -> SessionState: ...

    def step(
        self, requests: Sequence[FrameRequest], timer: StageTimer | None = None
    ) -> list[FrameResult]: ...


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
    """Stack uint8 HWC RGB frames into a (B, 3, H, W) tensor in [-1, 1] on ``device``."""
    batch = torch.stack([as_frame_tensor(f) for f in frames]).to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1)


def to_uint8_frames(images: torch.Tensor) -> list[torch.Tensor]:
    """(B, 3, H, W) images in [-1, 1] -> list of uint8 (H, W, 3) CPU tensors."""
    pixels = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return list(pixels.permute(0, 2, 3, 1).cpu())


def step_by_size(
    requests: Sequence[FrameRequest],
    step_group: Callable[[list[FrameRequest]], list[FrameResult]],
) -> list[FrameResult]:
    """Run ``step_group`` once per frame size (only same-size frames share a batch); results
    come back in the order of ``requests``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, request in enumerate(requests):
        height, width = request.frame.shape[:2]
        groups.setdefault((int(height), int(width)), []).append(i)
    results: list[FrameResult | None] = [None] * len(requests)
    for indices in groups.values():
        for i, result in zip(indices, step_group([requests[i] for i in indices]), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]
