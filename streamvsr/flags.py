"""Command-line flags for the settings, and argument types the commands share."""

from __future__ import annotations

import argparse

from .config import Settings, load_settings

ENGINE_FLAGS = {
    # flag: (settings key, help)
    "--engine": ("kind", "stream-diffvsr, bicubic or auto (Stream-DiffVSR if a GPU and weights)"),
    "--model": ("model", "Hugging Face model id or local checkpoint folder"),
    "--revision": ("revision", "hub revision (branch, tag or commit)"),
    "--device": ("device", "auto, cpu, cuda, cuda:N or mps"),
    "--dtype": ("dtype", "auto, fp32, fp16 or bf16"),
    "--steps": ("steps", "denoising steps (the model is distilled for 4)"),
    "--flow-model": ("flow_model", "raft_large or raft_small"),
    "--flow-resolution": ("flow_resolution", "hr (reference: RAFT on bicubic x4) or lr (faster)"),
    "--flow-weights": ("flow_weights", "RAFT state-dict file ('random' for speed tests only)"),
    "--attention": ("attention", "sdpa (default) or xformers"),
    "--unet": ("unet", "UNet override: component folder or weights file"),
    "--controlnet": ("controlnet", "ControlNet override: component folder or weights file"),
    "--vae": ("vae", "temporal VAE override: component folder or weights file"),
    "--vae-tile": ("vae_tile", "decode in latent tiles of this size (0 = off; saves memory)"),
    "--channels-last": ("channels_last", "NHWC memory format for the networks (true/false)"),
    "--sdpa-backend": ("sdpa_backend", "attention kernel: auto, flash, efficient, cudnn or math"),
    "--compile": (
        "compile",
        "torch.compile mode: off, default, reduce-overhead or max-autotune (+CUDA graphs)",
    ),
    "--cudnn-benchmark": (
        "cudnn_benchmark",
        "time cuDNN's kernels per shape once, keep the fastest: auto (on for CUDA), true, false",
    ),
    "--warmup-sizes": ("warmup_sizes", "LR sizes to compile at start, e.g. 320x180,480x270"),
    "--seed": ("seed", "noise seed of the first session"),
}
INT_KEYS = {"steps", "seed", "vae_tile"}
SERVER_FLAGS = {
    "--host": ("host", str, "address to listen on (0.0.0.0: all interfaces)"),
    "--port": ("port", int, "TCP port"),
    "--tls-cert": ("tls_cert", str, "PEM certificate: serve HTTPS"),
    "--tls-key": ("tls_key", str, "PEM private key of --tls-cert"),
    "--max-sessions": ("max_sessions", int, "concurrent sessions before 503"),
    "--max-batch": ("max_batch", int, "most frames per batched engine step"),
    "--whip-token": ("whip_token", str, "Bearer token WHIP publishers must send"),
    "--public-ip": ("public_ip", str, "public IP to advertise in ICE candidates (NAT, Docker)"),
    "--ice-host-addresses": ("ice_host_addresses", str, "comma-separated local ICE addresses"),
    "--h264-encoder": ("h264_encoder", str, "auto (NVENC if it opens, else x264), x264 or nvenc"),
}


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (defaults from configs/default.yaml)")
    group.add_argument("--config", metavar="YAML", help="settings file layered over the defaults")
    for flag, (key, text) in ENGINE_FLAGS.items():
        group.add_argument(
            flag,
            dest=f"engine_{key}",
            type=int if key in INT_KEYS else str,
            help=text,
            default=None,
        )


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server (defaults from configs/default.yaml)")
    for flag, (key, kind, text) in SERVER_FLAGS.items():
        group.add_argument(flag, dest=f"server_{key}", type=kind, help=text, default=None)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict] = {"engine": {}, "server": {}}
    for name, value in vars(args).items():
        section, _, key = name.partition("_")
        if section in overrides and value is not None:
            overrides[section][key] = value
    return load_settings(getattr(args, "config", None), overrides=overrides)


def parse_size(text: str) -> tuple[int, int]:
    """'320x180' (width x height) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("session counts must be >= 1")
    return values


def parse_size_wh(text: str) -> tuple[int, int]:
    height, width = parse_size(text)
    return width, height
