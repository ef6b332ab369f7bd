"""Shared fixtures: a tiny random-weight checkpoint, random RAFT weights, a loaded CPU engine,
synthetic moving LR frames and loopback-only ICE.

LR frames are kept tiny (8 x 8 .. 24 x 32) so that the suite runs in well under a few minutes on
two CPU cores; the flow estimator pads RAFT's inputs to its 128 px minimum.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.optical_flow import raft_small

from streamvsr import engine
from streamvsr.engine import FrameRequest, SessionState

# Small models on a small shared machine: one intra-op thread is much faster than two threads that
# spin against other processes (a 64-channel VAE decode measured 4 ms vs 460 ms). Override with
# STREAMVSR_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("STREAMVSR_TEST_THREADS", "1")))

# Default LR frame size (height, width) of the synthetic sequences.
LR_SIZE = (24, 32)


@pytest.fixture(autouse=True, scope="session")
def _quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("streamvsr.engine").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every WebRTC peer in this process offers only 127.0.0.1 as its host candidate; aioice's
    original (and whatever a server's start installed meanwhile) is back after the test."""
    import aioice.ice

    from streamvsr.server.ice import host_address_filter

    monkeypatch.setattr(aioice.ice, "get_host_addresses", host_address_filter(["127.0.0.1"]))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint in the official folder layout (seed 0)."""
    return engine.write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", size="tiny")


@pytest.fixture(scope="session")
def raft_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state-dict file of a random-init RAFT-small (the released weights need the network)."""
    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def load_tiny(tiny_checkpoint: Path, raft_weights: Path) -> Callable[..., engine.StreamDiffVSR]:
    """``load_tiny(**options)``: the tiny checkpoint on the CPU, fp32, random RAFT-small."""

    def load(model: str | Path | None = None, **options) -> engine.StreamDiffVSR:
        kwargs = dict(
            flow_model="raft_small",
            flow_weights=str(raft_weights),
            device="cpu",
            dtype="fp32",
            flow_resolution="hr",
        )
        kwargs.update(options)
        return engine.load_engine(str(model or tiny_checkpoint), **kwargs)

    return load


@pytest.fixture(scope="session")
def tiny_engine(load_tiny) -> engine.StreamDiffVSR:
    """The tiny engine, fp32 on the CPU, flow at HR (the reference's mode), 4 steps.

    Shared by many tests: tests may add hooks but must remove them.
    """
    return load_tiny()


def moving_frames(
    count: int,
    height: int = LR_SIZE[0],
    width: int = LR_SIZE[1],
    seed: int = 0,
    velocity: tuple[int, int] = (1, 2),
) -> list[np.ndarray]:
    """``count`` uint8 RGB frames (H, W, 3) of one textured scene panning by ``velocity`` (dy, dx)
    LR pixels per frame: smooth colour gradients plus random blobs, different for each seed."""
    rng = np.random.default_rng(seed)
    margin = count * max(abs(velocity[0]), abs(velocity[1])) + 1
    big_h, big_w = height + 2 * margin, width + 2 * margin
    yy, xx = np.mgrid[0:big_h, 0:big_w].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=(3, 2))
    freqs = rng.uniform(0.15, 0.45, size=(3, 2))
    scene = np.stack(
        [
            0.5
            + 0.25 * np.sin(freqs[c, 0] * yy + phases[c, 0])
            + 0.25 * np.cos(freqs[c, 1] * xx + phases[c, 1])
            for c in range(3)
        ],
        axis=2,
    )
    for _ in range(6):  # a few sharp-edged blobs
        cy, cx = rng.uniform(0, big_h), rng.uniform(0, big_w)
        radius = rng.uniform(2, 5)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        scene[mask] = rng.uniform(0, 1, size=3)
    scene = (scene.clip(0, 1) * 255).round().astype(np.uint8)
    frames = []
    for n in range(count):
        top, left = margin + n * velocity[0], margin + n * velocity[1]
        frames.append(np.ascontiguousarray(scene[top : top + height, left : left + width]))
    return frames


@pytest.fixture(scope="session")
def make_frames() -> Callable[..., list[np.ndarray]]:
    """``make_frames(count, height=24, width=32, seed=0, velocity=(1, 2))``, see moving_frames."""
    return moving_frames


def run_stream(
    eng,
    frames: Sequence[np.ndarray],
    seed: int = 0,
    noises: Sequence[torch.Tensor | None] | None = None,
    state: SessionState | None = None,
) -> tuple[list[torch.Tensor], list[SessionState]]:
    """Feed ``frames`` to one session, one ``step`` per frame: (HR frames, state after each)."""
    state = state if state is not None else eng.new_session(seed=seed)
    outputs, states = [], []
    for n, frame in enumerate(frames):
        noise = None if noises is None else noises[n]
        [result] = eng.step([FrameRequest(state, frame, noise)])
        state = result.state
        outputs.append(result.frame.clone())
        states.append(state)
    return outputs, states


@pytest.fixture(scope="session")
def stream() -> Callable[..., tuple[list[torch.Tensor], list[SessionState]]]:
    """``stream(engine, frames, seed=0, noises=None, state=None)``: see ``run_stream``."""
    return run_stream


@pytest.fixture(scope="session")
def tiny_engine_settings(tiny_checkpoint: Path, raft_weights: Path) -> dict[str, str]:
    """``engine`` settings that make the server load the tiny checkpoint (a real, slow start)."""
    return {
        "kind": "stream-diffvsr",
        "model": str(tiny_checkpoint),
        "flow_model": "raft_small",
        "flow_weights": str(raft_weights),
        "device": "cpu",
        "dtype": "fp32",
    }
