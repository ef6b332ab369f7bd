"""Bicubic x4 upscaling behind the engine interface: the baseline and the no-GPU fallback."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .base import FrameRequest, FrameResult, group_by_size, to_model_input, to_uint8_frames
from .device import resolve_device
from .flow import upscale_bicubic
from .state import SessionState
from .timing import NO_TIMER, StageTimer


class BicubicEngine:
    name = "bicubic"

    def __init__(self, device: str = "cpu", scale: int = 4):
        self.device = resolve_device(device)
        self.dtype = torch.float32
        self.scale = scale

    def new_session(self, seed: int | None = None) -> SessionState:
        return SessionState.new(0 if seed is None else seed)

    @torch.inference_mode()
    def step(
        self, requests: Sequence[FrameRequest], timer: StageTimer | None = None
    ) -> list[FrameResult]:
        timer = timer or NO_TIMER
        results: list[FrameResult | None] = [None] * len(requests)
        for indices in group_by_size(requests).values():
            with timer.stage("upload"):
                lr = to_model_input([requests[i].frame for i in indices], self.device, self.dtype)
            with timer.stage("upscale"):
                frames = to_uint8_frames(upscale_bicubic(lr, self.scale))
            for i, frame in zip(indices, frames):
                state = requests[i].state
                results[i] = FrameResult(replace(state, frame_index=state.frame_index + 1), frame)
        return results  # type: ignore[return-value]
