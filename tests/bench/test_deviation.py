"""The benchmark's deviation report: how far a speed setting's frames are from plain fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamvsr.bench.deviation import compare_frames
from streamvsr.bench.engine_speed import add_event


def test_identical_frames_do_not_deviate() -> None:
    frames = [np.full((4, 6, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    same = [frame.copy() for frame in frames]
    assert compare_frames(frames, same) == {"max": 0, "mean": 0.0, "psnr_db": math.inf, "frames": 3}


def test_a_known_difference_gives_its_numbers() -> None:
    plain = [np.full((4, 5, 3), 200, dtype=np.uint8) for _ in range(2)]
    frames = [frame.copy() for frame in plain]
    frames[1][0, 0, 0] = 190  # darker by 10: no wrap-around of uint8 subtraction
    frames[0][2, 3, 1] = 205
    pixels = 2 * 4 * 5 * 3
    result = compare_frames(frames, plain)
    assert result["max"] == 10 and result["frames"] == 2
    assert result["mean"] == pytest.approx(15 / pixels)
    assert result["psnr_db"] == pytest.approx(10 * math.log10(255**2 / ((100 + 25) / pixels)))


def test_frame_lists_of_different_lengths_are_an_error() -> None:
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        compare_frames([frame, frame], [frame])


def test_a_cases_deviation_goes_to_each_of_its_rows() -> None:
    rows: list[dict] = []
    add_event(rows, "result", {"sessions": 1})
    add_event(rows, "result", {"sessions": 2})
    add_event(rows, "deviation", {"max": 1})
    assert [row["deviation"] for row in rows] == [{"max": 1}, {"max": 1}]
