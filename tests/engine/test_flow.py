"""Backward warping (exact and the reference's mixed convention) and the RAFT flow estimator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_small

from streamvsr.engine.flow import FlowEstimator, flow_warp


def reference_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The spec's warp, from its text: grid = integer pixel grid + flow, normalised with
    2x/(W-1) - 1 (and H-1), sampled with grid_sample(bilinear, zeros, align_corners=False)."""
    _, _, height, width = image.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    sample_x = cols.to(flow.dtype).unsqueeze(0) + flow[:, 0]
    sample_y = rows.to(flow.dtype).unsqueeze(0) + flow[:, 1]
    grid = torch.stack(
        [2 * sample_x / max(width - 1, 1) - 1, 2 * sample_y / max(height - 1, 1) - 1], dim=-1
    )
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def constant_flow(batch: int, height: int, width: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.empty(batch, 2, height, width)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


# --- warping -----------------------------------------------------------------------------------


def test_exact_warp_integer_translation_moves_pixels():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 20, 24)
    flow = constant_flow(2, 20, 24, dx=2, dy=-1)
    warped = flow_warp(image, flow, exact=True)
    assert warped.shape == image.shape
    # Backward warp: out[y, x] = image[y + dy, x + dx] = image[y - 1, x + 2].
    torch.testing.assert_close(warped[:, :, 1:, :-2], image[:, :, :-1, 2:], rtol=0, atol=1e-5)
    # Samples from outside the image are zeros.
    assert warped[:, :, 0, :].abs().max() < 1e-5
    assert warped[:, :, :, -2:].abs().max() < 1e-5


def test_exact_warp_zero_flow_is_identity():
    image = torch.rand(1, 3, 9, 13)
    torch.testing.assert_close(
        flow_warp(image, torch.zeros(1, 2, 9, 13), exact=True), image, rtol=0, atol=1e-5
    )


def test_default_warp_is_the_reference_formula():
    torch.manual_seed(1)
    image = torch.randn(2, 3, 17, 23)
    flow = torch.randn(2, 2, 17, 23) * 3
    torch.testing.assert_close(flow_warp(image, flow), reference_warp(image, flow))


def test_default_warp_samples_the_mixed_convention_location():
    """With align_corners=False the normalised x lands on pixel x*W/(W-1) - 0.5, not on x: check it
    on a horizontal ramp (bilinear sampling of a ramp returns the sample position exactly)."""
    height, width = 5, 9
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 1, height, width).contiguous()
    warped = flow_warp(ramp, torch.zeros(1, 2, height, width))
    x = torch.arange(1, width - 1, dtype=torch.float32)
    expected = x * width / (width - 1) - 0.5
    torch.testing.assert_close(warped[0, 0, 2, 1:-1], expected)
    # Exact at the centre column, half a pixel off at the borders.
    centre = (width - 1) // 2
    assert warped[0, 0, 2, centre] == pytest.approx(centre, abs=1e-5)
    assert warped[0, 0, 2, width - 2] - (width - 2) > 0.3


def test_default_warp_differs_from_exact_near_borders_only():
    torch.manual_seed(2)
    image = torch.rand(1, 3, 33, 33)
    flow = constant_flow(1, 33, 33, dx=2, dy=-1)
    default = flow_warp(image, flow)
    exact = flow_warp(image, flow, exact=True)
    difference = (default - exact).abs()
    assert difference[..., 1:-3, :3].max() > 0.05  # left border
    assert difference[..., 1:-3, -6:-3].max() > 0.05  # right border
    # At the centre of the image the two conventions nearly agree (same pixel up to ~0.06 px).
    centre = difference[..., 14:18, 14:18]
    assert centre.max() < difference.max() / 3


def test_warp_keeps_dtype():
    image = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert flow_warp(image, torch.zeros(1, 2, 8, 8, dtype=torch.float64)).dtype == torch.float64


# --- the flow estimator ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raft():
    torch.manual_seed(5)
    return raft_small(weights=None).eval().requires_grad_(False)


def lr_pair(
    batch: int, height: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two LR frames in [-1, 1], the second a shifted copy of the first."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, height + 4, width + 4, generator=generator) * 2 - 1
    base = F.avg_pool2d(base, 3, stride=1, padding=1)
    return base[..., 2 : 2 + height, 1 : 1 + width], base[..., 2 : 2 + height, 3 : 3 + width]


@pytest.mark.parametrize(
    ("mode", "height", "width"),
    [("hr", 32, 40), ("hr", 33, 37), ("lr", 130, 134)],
)
def test_flow_estimator_output_shape(raft, mode, height, width):
    """(B, 2, 4H, 4W) in HR pixels, also when 4H, 4W (hr) or H, W (lr) are not multiples of 8."""
    estimator = FlowEstimator(raft, mode, scale=4, num_updates=2)
    current, previous = lr_pair(2 if mode == "hr" else 1, height, width)
    with torch.no_grad():
        flow = estimator.between(current, previous)
    assert flow.shape == (current.shape[0], 2, 4 * height, 4 * width)
    assert flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


def test_hr_flow_is_raft_on_bicubic_x4_frames(raft):
    current, previous = lr_pair(1, 32, 40, seed=1)
    estimator = FlowEstimator(raft, "hr", scale=4, num_updates=3)

    def bicubic(image):  # not clamped, align_corners False
        return F.interpolate(image, scale_factor=4, mode="bicubic", align_corners=False)

    with torch.no_grad():
        expected = raft(bicubic(current), bicubic(previous), num_flow_updates=3)[-1]
        torch.testing.assert_close(
            estimator.between(current, previous), expected, rtol=1e-4, atol=1e-4
        )


def test_lr_flow_is_upsampled_and_scaled_raft_at_lr(raft):
    current, previous = lr_pair(1, 128, 136, seed=2)
    estimator = FlowEstimator(raft, "lr", scale=4, num_updates=3)
    with torch.no_grad():
        low = raft(current, previous, num_flow_updates=3)[-1]
        expected = 4 * F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)
        got = estimator.between(current, previous)
    assert got.shape == (1, 2, 512, 544)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 1e-3  # the check is not vacuous


def test_flow_estimator_runs_raft_in_float32(raft):
    current, previous = lr_pair(1, 32, 32, seed=3)
    estimator = FlowEstimator(raft, "hr", num_updates=1)
    with torch.no_grad():
        flow = estimator.between(current.bfloat16(), previous.bfloat16())
    assert flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


@pytest.mark.parametrize(
    ("mode", "height", "width"), [("hr", 8, 8), ("hr", 18, 22), ("lr", 18, 22)]
)
def test_flow_estimator_small_frames(raft, mode, height, width):
    """RAFT needs 128 px a side (feature maps >= 16): smaller inputs are padded, and the flow is
    cropped back to (B, 2, 4H, 4W)."""
    estimator = FlowEstimator(raft, mode, num_updates=1)
    current, previous = lr_pair(1, height, width)
    with torch.no_grad():
        flow = estimator.between(current, previous)
    assert flow.shape == (1, 2, 4 * height, 4 * width)
    assert torch.isfinite(flow).all()
