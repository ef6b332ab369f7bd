"""Sessions whose frames are all known ahead (files, benchmarks), advanced together, with each
next frame's work started during the current step.

While the GPU runs a step, the CPU reads (decodes, resizes) every session's next frame and starts
its optical flow on a side CUDA stream (``engine.prefetch_flow``): when the next frame is known, the
flow and the decoding overlap the denoising instead of adding to it. (The live server cannot do
this: it always takes the newest frame, which is only known when the step starts.)
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
class LookaheadSession:
    """One input sequence as an engine session, with its next frame read ahead."""

    frames: Iterator[tuple[Any, np.ndarray]]  # (name or pts, LR frame as the engine takes it)
    state: SessionState
    current: tuple[Any, np.ndarray] | None = None  # the frame of the next step
    flow: PrefetchedFlow | None = None  # its flow, when started ahead
    payload: Any = None  # the caller's (e.g. where the outputs go)

    @classmethod
    def start(
        cls, engine: Engine, frames: Iterator, seed: int, payload: Any = None
    ) -> LookaheadSession:
        return cls(frames, engine.new_session(seed), next(frames, None), payload=payload)

    @property
    def finished(self) -> bool:
        return self.current is None


def advance(
    engine: Engine, sessions: list[LookaheadSession], timer: StageTimer | None = None
) -> list[tuple[LookaheadSession, Any, torch.Tensor]]:
    """One batched step for every unfinished session: [(session, frame key, HR frame)]."""
    active = [s for s in sessions if not s.finished]
    keys = [s.current[0] for s in active]
    requests = [FrameRequest(s.state, s.current[1], flow=s.flow) for s in active]
    pending = engine.launch(requests, timer)
    for session in active:  # meanwhile: read the next frames and start their flow
        previous = session.current[1]
        session.current = next(session.frames, None)
        session.flow = (
            None if session.finished else engine.prefetch_flow(previous, session.current[1])
        )
    results = pending.results()
    for session, result in zip(active, results, strict=True):
        session.state = result.state
    return [(s, key, r.frame) for s, key, r in zip(active, keys, results, strict=True)]
