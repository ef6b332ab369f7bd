"""How far a speed setting moves the frames from the plain fp32 path, on the same inputs and noise.

bf16 weights, compiled kernels, channels-last and SDPA kernels each change the order or precision
of float operations; the benchmark reports what that costs in output, next to what it saves in
time: max and mean absolute difference in grey levels, and PSNR against the plain fp32 frames.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# The speed settings of the plain path; everything else (model, device, flow) stays the case's.
PLAIN = {"dtype": "fp32", "compile": "off", "channels_last": False, "sdpa_backend": "auto"}


def compare_frames(frames: Sequence[np.ndarray], plain: Sequence[np.ndarray]) -> dict[str, Any]:
    """Deviation of uint8 ``frames`` from ``plain``, over all their pixels: max and mean
    |difference| (grey levels), PSNR in dB (inf when identical)."""
    diffs = np.stack(
        [
            np.abs(a.astype(np.int16) - b.astype(np.int16))
            for a, b in zip(frames, plain, strict=True)
        ]
    )
    mse = float(np.mean(diffs.astype(np.float64) ** 2))
    return {
        "max": int(diffs.max()),
        "mean": float(diffs.mean()),
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
        "frames": len(frames),
    }


def is_plain(engine, case) -> bool:
    """Whether ``case`` runs the plain fp32 eager path itself (then its deviation is nil)."""
    options = engine.acceleration.options
    return (
        engine.dtype == torch.float32
        and options.compile == PLAIN["compile"]
        and options.channels_last == PLAIN["channels_last"]
        and options.sdpa_backend == PLAIN["sdpa_backend"]
        and not case.prefetch_flow
    )


def deviation_from_plain(engine, case) -> dict[str, Any]:
    """The deviation of ``engine`` (loaded for ``case``) from a plain engine loaded alongside, on
    one session of the first ``case.deviation_frames`` frames of session 0's clip."""
    from streamvsr.engine import load_engine

    count = min(case.frames, case.deviation_frames)
    if is_plain(engine, case):
        return {"max": 0, "mean": 0.0, "psnr_db": math.inf, "frames": count, "plain": True}
    from .engine_speed import clip_frames

    clip = clip_frames(case, 0)[:count]
    if (1, case.height, case.width) not in engine.warm_shapes:  # compiled: run it as measured
        engine.warm_up([(case.height, case.width)], [1])
    frames = upscale_clip(engine, clip, case.seed, case.prefetch_flow)
    torch.manual_seed(case.seed)  # the same random RAFT weights as the case's engine got
    plain = load_engine(case.model, **{**case.options, **PLAIN})
    try:
        expected = upscale_clip(plain, clip, case.seed)
    finally:
        del plain
        gc.collect()
        if engine.device.type == "cuda":
            torch.cuda.empty_cache()
    return compare_frames(frames, expected)


def upscale_clip(engine, clip: Sequence[np.ndarray], seed: int, prefetch: bool = False):
    """One session through ``clip``, stepped as the benchmark steps it: uint8 HR frames."""
    from streamvsr.engine.lookahead import LookaheadSession

    from .engine_speed import step_streams

    stream = LookaheadSession.start(engine, enumerate(clip), seed)
    return [step_streams(engine, [stream], prefetch)[0].numpy() for _ in clip]
