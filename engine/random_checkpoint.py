"""Write a random-weight checkpoint in the official on-disk layout.

``size="tiny"`` gives a few-MB model for CPU tests; ``size="full"`` gives the official shapes (for
speed benchmarks: weights do not change speed). Both are read by the same loader as the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file

from .architecture import SCHEDULER_CONFIG, SIZES, text_encoder_config
from .vae import TemporalAutoencoderTiny

MODEL_INDEX = {
    "_class_name": "StreamDiffVSRPipeline",
    "_diffusers_version": "0.21.4",
    "controlnet": ["diffusers", "ControlNetModel"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": [None, "TemporalAutoencoderTiny"],
}


def write_random_checkpoint(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Create ``path`` with model_index.json, unet/, controlnet/, vae/, scheduler/, text_encoder/
    and tokenizer/, all weights random (seeded). Returns ``path``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    configs = SIZES[size]
    torch.manual_seed(seed)
    _write_json(root / "model_index.json", MODEL_INDEX)
    _write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    UNet2DConditionModel.from_config(configs["unet"]).save_pretrained(root / "unet")
    ControlNetModel.from_config(configs["controlnet"]).save_pretrained(root / "controlnet")
    _write_vae(root / "vae", configs["vae"])
    vocab_size = write_tokenizer(root / "tokenizer")
    _write_text_encoder(root / "text_encoder", vocab_size=vocab_size, **configs["text_encoder"])
    return root


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_vae(folder: Path, config: dict) -> None:
    vae = TemporalAutoencoderTiny.from_config(config)
    with torch.no_grad():  # the released model has trained mixing weights, not exactly 0.5
        for name, param in vae.named_parameters():
            if name.endswith("alpha"):
                param.uniform_(0.2, 0.8)
    _write_json(folder / "config.json", config)
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    save_file(state, folder / "diffusion_pytorch_model.safetensors")


def _write_text_encoder(folder: Path, hidden: int, layers: int, vocab_size: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**text_encoder_config(hidden, layers, vocab_size))
    CLIPTextModel(config).save_pretrained(folder, safe_serialization=True)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP convention)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer with a byte-level vocabulary of our own (no merges beyond a few).

    Returns the vocabulary size. Pad token is ``!`` as in the official tokenizer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n")]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
    }
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "do_lower_case": True,
            **special,
        },
    )
    return len(vocab)
