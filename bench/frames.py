"""Deterministic synthetic LR video: textured background and moving shapes (uint8 HxWx3)."""

from __future__ import annotations

import numpy as np


def moving_frames(height: int, width: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for n in range(count):
        dy, dx = n % height, (2 * n) % width  # the background pans one pixel down, two right
        frame = texture[dy : dy + height, dx : dx + width].copy()
        cy, cx = height / 2 + height / 4 * np.sin(n / 5), width / 2 + width / 4 * np.cos(n / 7)
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 < (min(height, width) / 5) ** 2
        frame[disc] = (255 * np.array([(n * 37) % 256, 200, 60]) / 255).astype(np.uint8)
        frames.append(frame)
    return frames
