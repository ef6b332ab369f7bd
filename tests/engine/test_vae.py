"""The temporal tiny autoencoder: exact checkpoint layout, strict loading, decoder temporal path,
and the temporal block formula of the reference implementation's TemporalAutoencoderTiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from streamvsr.engine import CheckpointError
from streamvsr.engine.architecture import vae_config
from streamvsr.engine.loading import load_vae
from streamvsr.engine.vae import TemporalAutoencoderTiny, TemporalBlock

# Keys and shapes of the reference implementation's VAE state dict (the team's model notes).
SPEC = json.loads((Path(__file__).parent / "data" / "vae_state_dict.json").read_text())

# Decoder layers that are temporal blocks, and the encoder layers whose outputs feed them (spec).
DECODER_BLOCKS = [2, 3, 4, 7, 8, 9, 12]
ENCODER_BLOCKS_DEEPEST_FIRST = [9, 8, 7, 5, 4, 3, 1]


def randomized(vae: TemporalAutoencoderTiny, seed: int = 0) -> TemporalAutoencoderTiny:
    """Random weights everywhere, alphas away from 0.5 (so current/previous order matters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("alpha"):
                param.copy_(torch.rand((), generator=generator) * 0.6 + 0.2)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return vae.eval()


@pytest.fixture(scope="module")
def full_vae() -> TemporalAutoencoderTiny:
    """The official architecture (64 channels), built from the spec's config, random weights."""
    return randomized(TemporalAutoencoderTiny.from_config(SPEC["config"]), seed=1)


def write_vae_folder(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        folder / "diffusion_pytorch_model.safetensors",
    )
    return folder


# --- layout ------------------------------------------------------------------------------------


def test_state_dict_matches_reference_layout(full_vae):
    state = full_vae.state_dict()
    shapes = {key: list(value.shape) for key, value in state.items()}
    assert set(shapes) - set(SPEC["tensors"]) == set(), "keys the reference checkpoint lacks"
    assert set(SPEC["tensors"]) - set(shapes) == set(), "keys of the reference checkpoint missing"
    assert shapes == SPEC["tensors"]
    assert len(state) == SPEC["tensor_count"] == 166
    assert sum(value.numel() for value in state.values()) == SPEC["parameter_count"]
    assert sum(p.numel() for p in full_vae.parameters()) == SPEC["parameter_count"]


def test_engine_vae_config_matches_spec_config():
    """The config the random-checkpoint writer uses for the official size is the spec's."""
    config = vae_config()
    for key, value in SPEC["config"].items():
        assert config[key] == value, key


# --- loading -----------------------------------------------------------------------------------


def test_load_vae_round_trip_is_strict_and_exact(tmp_path, full_vae):
    state = full_vae.state_dict()
    folder = write_vae_folder(tmp_path / "vae", SPEC["config"], state)
    loaded = load_vae(folder)
    assert isinstance(loaded, TemporalAutoencoderTiny)
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(loaded_state[key], value, rtol=0, atol=0, msg=key)
    # The loader reads config.json: the result has the official 4x spatial factor.
    assert loaded.spatial_scale == 4


def test_load_vae_reads_config_json(tmp_path):
    """A narrower VAE loads from its own config (nothing about the shape is hard-coded)."""
    config = vae_config(channels=8, scaling_factor=0.5)
    vae = randomized(TemporalAutoencoderTiny.from_config(config))
    loaded = load_vae(write_vae_folder(tmp_path / "vae", config, vae.state_dict()))
    assert loaded.config.scaling_factor == 0.5
    assert loaded.encoder.layers[0].weight.shape == (8, 3, 3, 3)


def test_load_vae_missing_key_is_named(tmp_path, full_vae):
    state = dict(full_vae.state_dict())
    del state["decoder.layers.12.temporal_processor.2.bias"]
    folder = write_vae_folder(tmp_path / "vae", SPEC["config"], state)
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.12\.temporal_processor\.2\.bias"):
        load_vae(folder)


def test_load_vae_renamed_key_is_named(tmp_path, full_vae):
    state = dict(full_vae.state_dict())
    state["encoder.layers.1.beta"] = state.pop("encoder.layers.1.alpha")
    folder = write_vae_folder(tmp_path / "vae", SPEC["config"], state)
    with pytest.raises(CheckpointError) as info:
        load_vae(folder)
    message = str(info.value)
    assert "encoder.layers.1.alpha" in message  # missing
    assert "encoder.layers.1.beta" in message  # unexpected


def test_load_vae_single_file_override(tmp_path, full_vae):
    folder = write_vae_folder(tmp_path / "vae", SPEC["config"], full_vae.state_dict())
    other = randomized(TemporalAutoencoderTiny.from_config(SPEC["config"]), seed=7)
    weights = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, weights)
    loaded = load_vae(folder, override=str(weights))
    torch.testing.assert_close(loaded.state_dict(), other.state_dict(), rtol=0, atol=0)


def test_load_vae_shape_mismatch_is_checkpoint_error(tmp_path):
    """Weights of a 16-channel VAE with the official 64-channel config.json."""
    small = TemporalAutoencoderTiny.from_config(vae_config(channels=16))
    folder = write_vae_folder(tmp_path / "vae", SPEC["config"], small.state_dict())
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.weight"):
        load_vae(folder)


def test_load_vae_from_folder_with_any_name(tmp_path, full_vae):
    folder = write_vae_folder(tmp_path / "my_vae", SPEC["config"], full_vae.state_dict())
    assert isinstance(load_vae(folder), TemporalAutoencoderTiny)


def test_random_checkpoint_vae_file_loads_strictly(tiny_checkpoint):
    vae = load_vae(tiny_checkpoint / "vae")
    on_disk = load_file(tiny_checkpoint / "vae" / "diffusion_pytorch_model.safetensors")
    assert vae.state_dict().keys() == on_disk.keys()


# --- decoder and encoder behaviour -------------------------------------------------------------


def test_spatial_scale_and_decode_size(full_vae):
    assert full_vae.spatial_scale == 4
    latents = torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        image = full_vae.decode(latents)
    assert image.shape == (2, 3, 20, 28)


def test_temporal_features_shapes_and_order(full_vae):
    image = torch.randn(1, 3, 20, 28)
    with torch.no_grad():
        features = full_vae.encoder.temporal_features(image)
    assert len(features) == 7 == full_vae.decoder.num_temporal_blocks
    assert [tuple(f.shape) for f in features] == (
        [(1, 64, 5, 7)] * 3 + [(1, 64, 10, 14)] * 3 + [(1, 64, 20, 28)]
    )
    # Deepest first: [L9, L8, L7, L5, L4, L3, L1] of the encoder, run WITHOUT the [0, 1] shift.
    outputs, x = {}, image
    with torch.no_grad():
        for index, layer in enumerate(full_vae.encoder.layers[:-1]):
            x = layer(x)
            outputs[index] = x
    for feature, index in zip(features, ENCODER_BLOCKS_DEEPEST_FIRST, strict=True):
        torch.testing.assert_close(feature, outputs[index], rtol=0, atol=0)


def test_temporal_features_feed_matching_decoder_blocks(full_vae):
    """Block i of the decoder gets features[i], and its input has that feature's size."""
    image = torch.randn(1, 3, 20, 28)
    latents = torch.randn(1, 4, 5, 7)
    seen: list[tuple[int, torch.Size, torch.Tensor]] = []
    handles = [
        full_vae.decoder.layers[i].register_forward_pre_hook(
            lambda module, args, i=i: seen.append((i, args[0].shape, args[1]))
        )
        for i in DECODER_BLOCKS
    ]
    try:
        with torch.no_grad():
            features = full_vae.encoder.temporal_features(image)
            full_vae.decode(latents, features)
    finally:
        for handle in handles:
            handle.remove()
    assert [i for i, _, _ in seen] == DECODER_BLOCKS
    for (_, input_shape, prev), feature in zip(seen, features, strict=True):
        assert prev is feature
        assert input_shape == feature.shape


def test_decoder_uses_features(full_vae):
    latents = torch.randn(1, 4, 4, 6)
    image = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        features = full_vae.encoder.temporal_features(image)
        plain = full_vae.decode(latents)
        guided = full_vae.decode(latents, features)
        guided_other = full_vae.decode(latents, full_vae.encoder.temporal_features(-image))
    assert guided.shape == plain.shape == (1, 3, 16, 24)
    assert (guided - plain).abs().max() > 1e-4
    assert (guided - guided_other).abs().max() > 1e-4


@pytest.mark.parametrize("count", [0, 6, 8])
def test_decoder_rejects_wrong_feature_count(full_vae, count):
    latents = torch.randn(1, 4, 4, 4)
    features = [torch.zeros(1, 64, 4, 4)] * count
    with pytest.raises(ValueError, match="7"):
        full_vae.decode(latents, features)


def test_decode_divides_by_scaling_factor_and_soft_clamps():
    vae = randomized(
        TemporalAutoencoderTiny.from_config(vae_config(channels=8, scaling_factor=0.5))
    )
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(latents), vae.decoder(latents / 0.5))
        # Soft clamp tanh(x / 3) * 3: all huge latents saturate at +-3 and decode alike.
        sign = torch.sign(latents)
        huge = vae.decoder(sign * 1e4)
        assert torch.isfinite(huge).all()
        torch.testing.assert_close(huge, vae.decoder(sign * 1e6))
        assert (huge - vae.decoder(sign * 3.0)).abs().max() > 1e-4


def test_encoder_forward_shifts_to_unit_range(full_vae):
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = (image + 1) / 2
        for layer in full_vae.encoder.layers:
            expected = layer(expected)
        torch.testing.assert_close(full_vae.encoder(image), expected)


# --- the temporal block formula ----------------------------------------------------------------


def reference_temporal_block(
    params: dict[str, torch.Tensor], x: torch.Tensor, prev: torch.Tensor | None
) -> torch.Tensor:
    """The spec's block, written from the text: conv-relu-conv-relu-conv; if prev: avg-pool 4x4
    both, flatten, concat current first, Conv1d-relu-Conv1d (k3, p1), alpha * first +
    (1 - alpha) * last, bilinear upsample, add 0.1x; relu(cur + x)."""
    cur = F.conv2d(x, params["conv.0.weight"], params["conv.0.bias"], padding=1).relu()
    cur = F.conv2d(cur, params["conv.2.weight"], params["conv.2.bias"], padding=1).relu()
    cur = F.conv2d(cur, params["conv.4.weight"], params["conv.4.bias"], padding=1)
    if prev is not None:
        batch, channels, height, width = cur.shape
        pooled_cur = torch.nn.AvgPool2d(4)(cur)
        pooled_prev = torch.nn.AvgPool2d(4)(prev)
        ph, pw = pooled_cur.shape[-2:]
        positions = ph * pw
        sequence = torch.cat(
            [
                pooled_cur.reshape(batch, channels, positions),
                pooled_prev.reshape(batch, channels, -1),
            ],
            dim=-1,
        )
        h = F.conv1d(
            sequence,
            params["temporal_processor.0.weight"],
            params["temporal_processor.0.bias"],
            padding=1,
        ).relu()
        h = F.conv1d(
            h, params["temporal_processor.2.weight"], params["temporal_processor.2.bias"], padding=1
        )
        alpha = params["alpha"]
        mixed = alpha * h[..., :positions] + (1 - alpha) * h[..., positions:]
        up = F.interpolate(
            mixed.reshape(batch, channels, ph, pw),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )
        cur = cur + 0.1 * up
    return torch.relu(cur + x)


@pytest.mark.parametrize("size", [(16, 20), (18, 22), (5, 9)])
def test_temporal_block_matches_reference_formula(size):
    torch.manual_seed(3)
    block = TemporalBlock(16, 16, "relu").eval()
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
        block.alpha.fill_(0.3)
    params = dict(block.state_dict())
    x = torch.randn(2, 16, *size)
    prev = torch.randn(2, 16, *size)
    with torch.no_grad():
        got = block(x, prev)
        torch.testing.assert_close(got, reference_temporal_block(params, x, prev))
        torch.testing.assert_close(block(x), reference_temporal_block(params, x, None))
        # The previous frame matters, and its place in the sequence (alpha != 0.5) does too.
        assert (got - block(x)).abs().max() > 1e-4
        swapped = dict(params, alpha=1 - params["alpha"])
        assert (got - reference_temporal_block(swapped, x, prev)).abs().max() > 1e-5
