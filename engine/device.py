"""Choosing the device, precision and attention backend."""

from __future__ import annotations

import importlib.util

import torch

from .errors import DeviceError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION_BACKENDS = ("sdpa", "xformers")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for, but no CUDA GPU is visible to torch")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was asked for, but MPS is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA GPUs that support it, fp16 on MPS, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r} (use auto, {', '.join(DTYPES)})")
    return DTYPES[name]


def check_attention(backend: str) -> None:
    if backend not in ATTENTION_BACKENDS:
        raise DeviceError(
            f"unknown attention backend {backend!r} (use {' or '.join(ATTENTION_BACKENDS)})"
        )
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise DeviceError(
            "attention 'xformers' was asked for but xformers is not installed "
            "(pip install 'streamvsr[xformers]'), or use the default 'sdpa'"
        )
