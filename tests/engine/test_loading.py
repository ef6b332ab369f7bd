"""Loading the engine: local checkpoints, the empty-prompt embedding, errors a user can act on,
per-component overrides, offline mode, and device / precision / attention choices."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamvsr import engine
from streamvsr.engine import CheckpointError, DeviceError, FrameRequest
from streamvsr.engine.device import check_attention, resolve_device, resolve_dtype

REPO = Path(__file__).resolve().parents[2]


def copy_checkpoint(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def first_output(eng, frame: np.ndarray, seed: int = 0) -> torch.Tensor:
    [result] = eng.step([FrameRequest(eng.new_session(seed=seed), frame)])
    return result.state.prev_hr


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    """Another tiny random checkpoint (different seed, so different weights)."""
    return engine.write_random_checkpoint(tmp_path_factory.mktemp("other") / "tiny", seed=1)


# --- a good checkpoint -------------------------------------------------------------------------


def test_loads_local_checkpoint_with_empty_prompt_embedding(tiny_engine, tiny_checkpoint):
    from transformers import CLIPTextModel, CLIPTokenizer

    assert tiny_engine.steps == 4
    assert tiny_engine.scale == 4
    assert tiny_engine.dtype == torch.float32 and tiny_engine.device.type == "cpu"
    tokenizer = CLIPTokenizer.from_pretrained(tiny_checkpoint / "tokenizer")
    assert tokenizer.pad_token == "!"  # as in the official tokenizer
    tokens = tokenizer("", padding="max_length", max_length=77, return_tensors="pt")
    encoder = CLIPTextModel.from_pretrained(tiny_checkpoint / "text_encoder").eval()
    with torch.no_grad():
        expected = encoder(tokens.input_ids).last_hidden_state
    assert tiny_engine.prompt_embeds.shape == (1, 77, encoder.config.hidden_size) == (1, 77, 32)
    torch.testing.assert_close(tiny_engine.prompt_embeds, expected)
    # Not the all-zero embedding some ports used.
    assert tiny_engine.prompt_embeds.abs().max() > 0.1


def test_loaded_weights_are_the_checkpoint_files(tiny_engine, tiny_checkpoint):
    for component in ("unet", "controlnet", "vae"):
        on_disk = load_file(tiny_checkpoint / component / "diffusion_pytorch_model.safetensors")
        loaded = getattr(tiny_engine, component).state_dict()
        assert loaded.keys() == on_disk.keys(), component
        for key, value in on_disk.items():
            assert torch.equal(loaded[key], value), (component, key)


def test_steps_option(load_tiny, make_frames):
    eng = load_tiny(steps=2)
    assert eng.steps == 2
    assert eng.sampler.timesteps == (999, 499)
    frames = make_frames(2, 8, 12)
    state = eng.new_session(seed=0)
    for frame in frames:
        [result] = eng.step([FrameRequest(state, frame)])
        state = result.state
    assert result.frame.shape == (32, 48, 3)
    assert state.frame_index == 2


# --- broken checkpoints ------------------------------------------------------------------------


def test_missing_path_says_how_to_fix(tmp_path, raft_weights):
    missing = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(CheckpointError) as info:
        engine.load_engine(str(missing), device="cpu", flow_weights=str(raft_weights))
    message = str(info.value)
    assert str(missing) in message
    assert "streamvsr download" in message


def test_file_instead_of_folder(tmp_path, raft_weights):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="streamvsr download") as info:
        engine.load_engine(str(path), device="cpu", flow_weights=str(raft_weights))
    assert str(path) in str(info.value)


def test_folder_without_unet_names_the_missing_file(tmp_path, tiny_checkpoint, load_tiny):
    root = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    shutil.rmtree(root / "unet")
    with pytest.raises(CheckpointError, match=r"unet/config\.json") as info:
        load_tiny(root)
    assert str(root) in str(info.value)


@pytest.mark.parametrize("component", ["unet", "vae", "controlnet"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_give_checkpoint_error(
    tmp_path, tiny_checkpoint, load_tiny, component, damage
):
    root = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    weights = root / component / "diffusion_pytorch_model.safetensors"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as info:
        load_tiny(root)
    message = str(info.value)
    assert component in message
    assert "streamvsr download" in message


def test_missing_flow_weights_file(load_tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tiny(flow_weights=str(tmp_path / "missing.pth"))


# --- overrides ---------------------------------------------------------------------------------


def test_unet_override_folder_changes_only_the_unet(
    tiny_engine, load_tiny, other_checkpoint, make_frames
):
    eng = load_tiny(unet=str(other_checkpoint / "unet"))
    other_unet = load_file(other_checkpoint / "unet" / "diffusion_pytorch_model.safetensors")
    for key, value in eng.unet.state_dict().items():
        assert torch.equal(value, other_unet[key]), key
    for key, value in eng.controlnet.state_dict().items():
        assert torch.equal(value, tiny_engine.controlnet.state_dict()[key]), key
    frame = make_frames(1, 8, 12, seed=20)[0]
    assert (first_output(eng, frame) - first_output(tiny_engine, frame)).abs().max() > 1e-3


def test_vae_override_single_safetensors_file(
    tiny_engine, load_tiny, other_checkpoint, make_frames
):
    weights = other_checkpoint / "vae" / "diffusion_pytorch_model.safetensors"
    eng = load_tiny(vae=str(weights))
    for key, value in load_file(weights).items():
        assert torch.equal(eng.vae.state_dict()[key], value), key
    frame = make_frames(1, 8, 12, seed=21)[0]
    assert (first_output(eng, frame) - first_output(tiny_engine, frame)).abs().max() > 1e-3


def test_override_that_is_neither_file_nor_checkpoint_folder(load_tiny, tmp_path):
    with pytest.raises(CheckpointError, match="unet"):
        load_tiny(unet=str(tmp_path / "nowhere"))


# --- offline -----------------------------------------------------------------------------------


def test_offline_without_cached_weights_says_how_to_fix(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE / HF_HOME at import: run a fresh interpreter."""
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), PYTHONPATH=str(REPO))
    script = textwrap.dedent(
        """
        import sys
        from streamvsr import engine
        try:
            engine.load_engine("Jamichsu/Stream-DiffVSR", device="cpu")
        except engine.CheckpointError as exc:
            print("CheckpointError:", exc)
            sys.exit(3)
        print("loaded?!")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout
    assert "cache" in message
    assert str(hf_home) in message
    assert "streamvsr download" in message
    assert "Traceback" not in done.stderr


# --- device, precision, attention --------------------------------------------------------------


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(DeviceError, match="fp32"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(DeviceError):
        resolve_device("no-such-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_without_gpu_is_a_device_error(tiny_checkpoint, raft_weights):
    with pytest.raises(DeviceError, match="cuda"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="cuda"):
        engine.load_engine(str(tiny_checkpoint), device="cuda", flow_weights=str(raft_weights))


def test_unknown_attention_backend():
    with pytest.raises(DeviceError, match="sdpa"):
        check_attention("flash-magic")
    check_attention("sdpa")


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("xformers") is not None, reason="xformers is installed"
)
def test_xformers_not_installed_is_a_clear_device_error(load_tiny):
    with pytest.raises(DeviceError) as info:
        check_attention("xformers")
    message = str(info.value)
    assert "xformers" in message and "not installed" in message and "sdpa" in message
    with pytest.raises(DeviceError, match="xformers"):
        load_tiny(attention="xformers")
