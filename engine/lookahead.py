"""Streams of an upscale advanced together, with each next frame's work started ahead.

While the GPU runs a step, the CPU reads (decodes, resizes) every stream's next frame and starts its
optical flow on a side CUDA stream (``engine.prefetch_flow``): offline, the next frame is always
known, so the flow and the decoding overlap the denoising instead of adding to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import Engine, FrameRequest
from .prefetch import PrefetchedFlow
from .state import SessionState
from .timing import StageTimer


@dataclass
class Stream:
    """One input sequence as an engine session."""

    frames: Iterator[tuple[Any, np.ndarray]]  # (name or pts, LR frame as the engine takes it)
    state: SessionState
    current: tuple[Any, np.ndarray] | None = None  # the frame of the next step
    flow: PrefetchedFlow | None = None  # its flow, when started ahead
    payload: Any = None  # the caller's (e.g. where the outputs go)

    @classmethod
    def start(cls, engine: Engine, frames: Iterator, seed: int, payload: Any = None) -> Stream:
        return cls(frames, engine.new_session(seed), next(frames, None), payload=payload)

    @property
    def finished(self) -> bool:
        return self.current is None


def advance(
    engine: Engine, streams: list[Stream], timer: StageTimer | None = None
) -> list[tuple[Stream, Any, torch.Tensor]]:
    """One batched step for every unfinished stream: [(stream, frame key, HR frame)]."""
    active = [s for s in streams if not s.finished]
    keys = [s.current[0] for s in active]
    requests = [FrameRequest(s.state, s.current[1], flow=s.flow) for s in active]
    pending = engine.launch(requests, timer)
    for stream in active:  # meanwhile: read the next frames and start their flow
        previous = stream.current[1]
        stream.current = next(stream.frames, None)
        stream.flow = None if stream.finished else engine.prefetch_flow(previous, stream.current[1])
    results = pending.results()
    for stream, result in zip(active, results, strict=True):
        stream.state = result.state
    return [(s, key, r.frame) for s, key, r in zip(active, keys, results, strict=True)]
