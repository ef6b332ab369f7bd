"""Stage timers (synchronising and CUDA-event based) and the engine's upload/download helpers."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from streamvsr.engine import BicubicEngine
from streamvsr.engine.base import to_model_input, to_uint8_frames
from streamvsr.engine.timing import EventStageTimer, StageTimer, stage_timer
from streamvsr.server.scheduler import FrameScheduler

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_event_timer_accumulates_repeated_stages() -> None:
    timer = EventStageTimer("cpu")
    for _ in range(4):  # like "unet", entered once per denoising step
        with timer.stage("unet"):
            time.sleep(0.005)
    with timer.stage("vae_decode"):
        pass
    totals = timer.reset()
    assert set(totals) == {"unet", "vae_decode"}
    assert totals["unet"] >= 4 * 0.004
    assert 0 <= totals["vae_decode"] < totals["unet"]


def test_event_timer_reset_returns_and_clears() -> None:
    timer = EventStageTimer(None)
    with timer.stage("upload"):
        pass
    assert set(timer.reset()) == {"upload"}
    assert timer.reset() == {}


def test_event_timer_falls_back_to_wall_clock_on_cpu() -> None:
    timer = EventStageTimer(torch.device("cpu"))
    with timer.stage("flow"):
        time.sleep(0.02)
    assert 0.015 <= timer.reset()["flow"] < 1.0


def test_event_timer_nested_stages_and_errors() -> None:
    timer = EventStageTimer("cpu")
    with pytest.raises(RuntimeError), timer.stage("outer"):
        with timer.stage("inner"):
            time.sleep(0.01)
        raise RuntimeError("boom")
    totals = timer.reset()
    assert totals["outer"] >= totals["inner"] >= 0.008


def test_stage_timer_factory() -> None:
    assert type(stage_timer("cpu", sync=True)) is StageTimer
    assert type(stage_timer("cpu", sync=False)) is EventStageTimer
    assert isinstance(stage_timer(None, sync=False), StageTimer)  # fits `timer: StageTimer`


def test_scheduler_uses_event_timer() -> None:
    loop = asyncio.new_event_loop()
    try:
        scheduler = FrameScheduler(BicubicEngine("cpu"), loop)
        assert isinstance(scheduler._timer, EventStageTimer)
    finally:
        loop.close()


def _frames(count: int = 3, height: int = 5, width: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    frames[0][0, 0] = (0, 255, 128)  # the extremes are exact too
    return frames


def test_model_input_round_trip_on_cpu() -> None:
    frames = _frames()
    lr = to_model_input([frames[0], torch.from_numpy(frames[1]), frames[2]], "cpu", torch.float32)
    assert lr.shape == (3, 3, 5, 7) and lr.dtype == torch.float32 and lr.device.type == "cpu"
    assert lr.min() >= -1 and lr.max() <= 1
    assert torch.allclose(lr[0, :, 0, 0], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)
    out = to_uint8_frames(lr)
    assert len(out) == 3
    for frame, back in zip(frames, out, strict=True):
        assert back.shape == (5, 7, 3) and back.dtype == torch.uint8 and back.device.type == "cpu"
        assert torch.equal(back, torch.from_numpy(frame))


def test_uint8_frames_clamp_and_round_on_cpu() -> None:
    images = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    [frame] = to_uint8_frames(images)
    assert frame[0, :, 0].tolist() == [0, 0, 128, 255, 255]


@needs_cuda
def test_event_timer_does_not_synchronise_inside_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    device = torch.device("cuda")
    x = torch.randn(512, 512, device=device)
    timer = EventStageTimer(device)

    def forbidden(*args, **kwargs):
        raise AssertionError("synchronised inside a stage")

    torch.cuda.synchronize()
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "synchronize", forbidden)  # explicit syncs
        torch.cuda.set_sync_debug_mode("error")  # implicit ones (.item(), blocking copies...)
        try:
            for _ in range(4):
                with timer.stage("unet"):
                    y = x @ x
            with timer.stage("vae_decode"):
                y = y.relu()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        # The control: the synchronising timer is caught by the same check.
        with pytest.raises(AssertionError, match="synchronised"), StageTimer(device).stage("x"):
            pass
    totals = timer.reset()
    assert set(totals) == {"unet", "vae_decode"}
    assert totals["unet"] > 0 and totals["vae_decode"] >= 0
    assert timer.reset() == {}


@needs_cuda
def test_cuda_transfers_match_cpu() -> None:
    frames = _frames(count=2, height=16, width=24)
    lr = to_model_input(frames, "cuda", torch.float32)
    assert lr.device.type == "cuda" and lr.dtype == torch.float32
    assert torch.equal(lr.cpu(), to_model_input(frames, "cpu", torch.float32))
    half = to_model_input(frames, "cuda", torch.float16)
    assert half.dtype == torch.float16
    assert all(torch.equal(a, b) for a, b in zip(to_uint8_frames(half), to_uint8_frames(lr)))
    first = to_uint8_frames(lr)
    second = to_uint8_frames(-lr)  # the next step must not overwrite the first step's frames
    for frame, back, negative in zip(frames, first, second, strict=True):
        assert back.device.type == "cpu" and back.is_pinned() and back.is_contiguous()
        assert torch.equal(back, torch.from_numpy(frame))
        assert torch.equal(negative, torch.from_numpy(255 - frame))
