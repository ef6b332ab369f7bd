"""The bicubic baseline engine behind the same interface."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from streamvsr.engine import BicubicEngine, FrameRequest


def reference_bicubic(frame: np.ndarray, scale: int = 4) -> torch.Tensor:
    """torch's x4 bicubic (align_corners False) of a uint8 (H, W, 3) frame, computed on a
    contiguous NCHW uint8 tensor (the engine feeds channels-last views of HWC frames)."""
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0)
    up = F.interpolate(image.contiguous(), scale_factor=scale, mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0)


def test_output_is_torch_bicubic_x4(make_frames):
    eng = BicubicEngine(device="cpu")
    assert eng.scale == 4
    for height, width in [(24, 32), (9, 13)]:
        frame = make_frames(1, height, width, seed=3)[0]
        [result] = eng.step([FrameRequest(eng.new_session(seed=0), frame)])
        assert result.frame.shape == (4 * height, 4 * width, 3)
        assert result.frame.dtype == torch.uint8
        difference = (result.frame.int() - reference_bicubic(frame).int()).abs()
        assert difference.max() <= 1  # rounding only
        assert difference.float().mean() < 0.05


def test_accepts_torch_frames():
    eng = BicubicEngine()
    frame = torch.randint(0, 256, (8, 12, 3), dtype=torch.uint8)
    [result] = eng.step([FrameRequest(eng.new_session(), frame)])
    difference = (result.frame.int() - reference_bicubic(frame.numpy()).int()).abs()
    assert difference.max() <= 1


def test_sessions_are_independent(make_frames):
    eng = BicubicEngine()
    big = make_frames(3, 16, 24, seed=1)
    small = make_frames(3, 8, 8, seed=2)
    other = make_frames(3, 16, 24, seed=3)
    alone = []
    for frames in (big, small, other):
        state = eng.new_session()
        outputs = []
        for frame in frames:
            [result] = eng.step([FrameRequest(state, frame)])
            state = result.state
            outputs.append(result.frame.clone())
        alone.append(outputs)

    states = [eng.new_session(seed=s) for s in range(3)]
    for n in range(3):
        requests = [FrameRequest(s, f[n]) for s, f in zip(states, (big, small, other), strict=True)]
        results = eng.step(requests[::-1])[::-1]  # any order, mixed sizes
        states = [r.state for r in results]
        for k, result in enumerate(results):
            assert torch.equal(result.frame, alone[k][n])
    assert [s.frame_index for s in states] == [3, 3, 3]
    assert len({id(s) for s in states}) == 3
