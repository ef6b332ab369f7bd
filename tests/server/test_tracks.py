"""``fit_within``: the size an incoming frame is scaled to before the engine."""

from __future__ import annotations

import pytest

from streamvsr.server.tracks import InputLimits, fit_within

LIMITS = InputLimits(max_width=640, max_height=360)


@pytest.mark.parametrize("size", [(640, 360), (320, 180), (640, 2), (33, 17), (1, 1)])
def test_a_size_that_fits_is_kept_even_when_odd(size: tuple[int, int]) -> None:
    assert fit_within(*size, LIMITS) == size


@pytest.mark.parametrize(
    ("size", "fitted"),
    [
        ((1280, 720), (640, 360)),  # same aspect: exactly the limits
        ((1920, 1080), (640, 360)),
        ((1280, 360), (640, 180)),  # the width limits it
        ((480, 720), (240, 360)),  # the height limits it
        ((1000, 562), (640, 358)),  # 359.68 rounds down to even
        ((641, 361), (638, 360)),  # just over: the height limits it, the width is made even
    ],
)
def test_a_larger_size_keeps_its_aspect_and_becomes_even(
    size: tuple[int, int], fitted: tuple[int, int]
) -> None:
    assert fit_within(*size, LIMITS) == fitted
    width, height = fitted
    assert width <= LIMITS.max_width and height <= LIMITS.max_height
    assert width % 2 == 0 and height % 2 == 0


def test_an_extreme_aspect_never_goes_below_two_pixels() -> None:
    assert fit_within(100_000, 3, LIMITS) == (640, 2)
    assert fit_within(3, 100_000, LIMITS) == (2, 360)


@pytest.mark.parametrize("size", [(0, 360), (640, 0)])
def test_an_empty_frame_is_an_error(size: tuple[int, int]) -> None:
    with pytest.raises(ZeroDivisionError):
        fit_within(*size, LIMITS)
