"""Frames leaving the engine: RGB, or YUV 4:2:0 planes laid out as PyAV and encoders take them."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from streamvsr.engine import BicubicEngine, FrameRequest, PixelFormat
from streamvsr.engine.base import Download


def smooth_images(batch: int, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1]: gradients, so that 2x2 chroma averaging loses almost nothing."""
    ys = torch.linspace(-1, 1, height).view(1, height, 1)
    xs = torch.linspace(-1, 1, width).view(1, 1, width)
    planes = [0.8 * xs * ys, 0.9 * xs.expand(1, height, width), -0.7 * ys.expand(1, height, width)]
    image = torch.cat(planes).unsqueeze(0)
    return torch.cat([image * (1 - 0.2 * b) for b in range(batch)])


def test_yuv420p_planes_match_what_swscale_makes_from_the_rgb_frames() -> None:
    images = smooth_images(2, 48, 64)
    rgb = Download(images).frames()
    yuv = Download(images, "yuv420p").frames()
    for rgb_frame, yuv_frame in zip(rgb, yuv, strict=True):
        assert rgb_frame.shape == (48, 64, 3) and yuv_frame.shape == (72, 64)
        assert yuv_frame.dtype == torch.uint8
        expected = av.VideoFrame.from_ndarray(rgb_frame.numpy(), format="rgb24")
        expected = expected.reformat(format="yuv420p").to_ndarray()
        diff = np.abs(yuv_frame.numpy().astype(int) - expected.astype(int))
        assert diff[:48].max() <= 1  # luma: the same BT.601 limited-range formula
        assert diff[48:].max() <= 2  # chroma: 2x2 average vs swscale's filter
        # And the encoders' input frame built from the planes shows the same picture.
        back = av.VideoFrame.from_ndarray(yuv_frame.numpy(), format="yuv420p")
        back = back.to_ndarray(format="rgb24").astype(int)
        assert np.abs(back - rgb_frame.numpy().astype(int)).mean() < 2


def test_odd_sizes_stay_rgb_and_say_so() -> None:
    download = Download(smooth_images(1, 9, 12), PixelFormat.YUV420P)
    [frame] = download.frames()
    assert frame.shape == (9, 12, 3) and download.pixel_format is PixelFormat.RGB24


def test_unknown_pixel_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="nv12"):
        Download(smooth_images(1, 8, 8), "nv12")


def test_cpu_bicubic_results_are_rgb_whatever_was_asked(make_frames) -> None:
    engine = BicubicEngine("cpu")
    [frame] = make_frames(1, 8, 10, seed=3)
    [result] = engine.step([FrameRequest(engine.new_session(), frame)], pixel_format="yuv420p")
    assert result.pixel_format is PixelFormat.RGB24 and result.frame.shape == (32, 40, 3)


def test_the_engine_hands_out_yuv_planes_on_request(tiny_engine, make_frames) -> None:
    frames = make_frames(2, 16, 24, seed=40)
    state = tiny_engine.new_session(seed=2)
    for frame in frames:
        [rgb] = tiny_engine.step([FrameRequest(state, frame)])
        [yuv] = tiny_engine.step([FrameRequest(state, frame)], pixel_format="yuv420p")
        assert yuv.frame.shape == (96, 96) and rgb.frame.shape == (64, 96, 3)
        assert yuv.pixel_format is PixelFormat.YUV420P and rgb.pixel_format is PixelFormat.RGB24
        picture = av.VideoFrame.from_ndarray(yuv.frame.numpy(), format="yuv420p")
        picture = picture.to_ndarray(format="rgb24").astype(int)
        assert np.abs(picture - rgb.frame.numpy().astype(int)).mean() < 8
        assert yuv.state.frame_index == rgb.state.frame_index
        state = rgb.state
