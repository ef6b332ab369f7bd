"""Tiled decoding with the temporal VAE: constant decoder memory for very large outputs.

The latent is cut into overlapping tiles; each tile is decoded with the matching crops of the
temporal feature maps (which live at 1x, 2x and 4x the latent's size), and the decoded tiles are
blended with linear ramps across the overlap. Blocks see only their tile, so the result is close
to, not bit-equal with, a whole decode (the temporal processor pools and mixes positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .vae import TemporalAutoencoderTiny


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``length`` with tiles of ``tile`` overlapping by ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(size: int, fade: int, at_start: bool, at_end: bool, like: torch.Tensor) -> torch.Tensor:
    weights = torch.ones(size, dtype=like.dtype, device=like.device)
    if fade > 0:
        rise = (torch.arange(fade, dtype=like.dtype, device=like.device) + 0.5) / fade
        if at_start:
            weights[:fade] = rise
        if at_end:
            weights[-fade:] = torch.minimum(weights[-fade:], rise.flip(0))
    return weights


def decode_tiled(
    vae: TemporalAutoencoderTiny,
    latents: torch.Tensor,
    features: Sequence[torch.Tensor] | None,
    tile: int,
    overlap: int,
) -> torch.Tensor:
    """Decode ``latents`` (B, C, H, W) tile by tile; same result shape as ``vae.decode``."""
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap ({overlap}) must be smaller than the tile ({tile})")
    _, _, height, width = latents.shape
    scale = vae.spatial_scale
    out = weight = None
    for y in tile_starts(height, tile, overlap):
        for x in tile_starts(width, tile, overlap):
            y1, x1 = min(y + tile, height), min(x + tile, width)
            crops = None
            if features is not None:
                crops = [_crop(f, height, y, y1, x, x1) for f in features]
            decoded = vae.decode(latents[..., y:y1, x:x1], crops)
            if out is None:
                out = decoded.new_zeros((*decoded.shape[:2], height * scale, width * scale))
                weight = decoded.new_zeros((1, 1, height * scale, width * scale))
            fade = overlap * scale
            mask = _ramp(decoded.shape[-2], fade, y > 0, y1 < height, decoded)[:, None] * _ramp(
                decoded.shape[-1], fade, x > 0, x1 < width, decoded
            )
            region = (..., slice(y * scale, y1 * scale), slice(x * scale, x1 * scale))
            out[region] += decoded * mask
            weight[region] += mask
    return out / weight


def _crop(feature: torch.Tensor, height: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    ratio = feature.shape[-2] // height  # 1, 2 or 4: the map's scale relative to the latent
    return feature[..., y0 * ratio : y1 * ratio, x0 * ratio : x1 * ratio]
