"""Tiled VAE decoding: 4x geometry, temporal features cropped per tile, seams blended."""

from __future__ import annotations

import itertools

import pytest
import torch

from streamvsr.engine.architecture import vae_config
from streamvsr.engine.tiling import decode_tiled, tile_starts
from streamvsr.engine.vae import TemporalAutoencoderTiny


@pytest.fixture(scope="module")
def vae() -> TemporalAutoencoderTiny:
    torch.manual_seed(0)
    vae = TemporalAutoencoderTiny.from_config(vae_config(channels=16)).eval()
    with torch.no_grad():  # random weights barely use the temporal path: make it count
        for layer in vae.decoder.layers:
            if hasattr(layer, "temporal_processor"):
                layer.temporal_processor[2].weight.mul_(30)
    return vae


def test_tiles_cover_every_position_once_or_more() -> None:
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(40, 16, 4) == [0, 12, 24]
    for length, tile, overlap in [(40, 16, 4), (33, 8, 2), (17, 16, 8)]:
        starts = tile_starts(length, tile, overlap)
        covered = set().union(*(range(s, min(s + tile, length)) for s in starts))
        assert covered == set(range(length))
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


@torch.inference_mode()
def test_one_tile_is_exactly_the_whole_decode(vae) -> None:
    latents = torch.randn(2, 4, 12, 10)
    features = vae.encoder.temporal_features(torch.rand(2, 3, 48, 40) * 2 - 1)
    expected = vae.decode(latents, features)
    torch.testing.assert_close(decode_tiled(vae, latents, features, 16, 4), expected)


@torch.inference_mode()
@pytest.mark.parametrize("with_features", [False, True])
def test_tiled_decode_is_close_to_the_whole_decode(vae, with_features) -> None:
    torch.manual_seed(1)
    latents = torch.randn(1, 4, 40, 36)
    image = torch.rand(1, 3, 160, 144) * 2 - 1
    features = vae.encoder.temporal_features(image) if with_features else None
    whole = vae.decode(latents, features)
    tiled = decode_tiled(vae, latents, features, 16, 6)
    assert tiled.shape == whole.shape == (1, 3, 160, 144)
    difference = (tiled - whole).abs()
    # Tile borders see zero padding instead of neighbours; the overlap blends that away except
    # for a small residue. A wrong crop of the temporal features or a wrong 4x placement would
    # leave differences of the order of the image itself.
    assert difference.mean() < 0.02 * whole.abs().mean()
    if with_features:
        wrong = [torch.roll(f, shifts=3, dims=-1) for f in features]
        misplaced = decode_tiled(vae, latents, wrong, 16, 6)
        assert (misplaced - whole).abs().mean() > 2 * difference.mean()


def test_engine_uses_tiles_when_asked(load_tiny, make_frames) -> None:
    from streamvsr.engine import FrameRequest

    frames = make_frames(2, 24, 32, seed=5)
    outputs = {}
    for tile in (0, 8):
        engine = load_tiny(vae_tile=tile)
        state = engine.new_session(seed=0)
        for frame in frames:
            [result] = engine.step([FrameRequest(state, frame)])
            state = result.state
        outputs[tile] = result.frame.int()
    assert outputs[8].shape == outputs[0].shape == (96, 128, 3)
    difference = (outputs[8] - outputs[0]).abs().float()
    assert 0 < difference.mean() < 8  # tiled: close to, not equal to, a whole decode
