"""The engine's options, and how every setting of streamvsr is declared.

A setting is a dataclass field made by ``setting``: its type (the annotation), its default, its
help and its check, in one place. The settings file, environment variables, command-line flags
and documentation are derived from these declarations (``streamvsr.config``, ``streamvsr.flags``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

Check = Callable[[Any], Any]

SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
# "off", or a torch.compile mode; the reduce-overhead and max-autotune modes use CUDA graphs.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# inductor generates kernels; eager and aot_eager only trace (to debug compile problems, and for
# quick tests of everything around compiling).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def setting(default: Any, help: str, check: Check, flag: str | None = None) -> Any:
    """Declare a setting. ``default`` is written as in the settings file; ``check`` turns it, and
    every value from a file, the environment or a flag, into the field's value, or raises a
    ``ValueError`` that says what it must be. ``flag``: when not ``--`` + the dashed name."""
    metadata = {"default": default, "help": help, "check": check, "flag": flag}
    return field(default=check(default), metadata=metadata)


# --- checks ----------------------------------------------------------------------------------


def choice(*allowed: str) -> Check:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    check.choices = allowed
    return check


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> int:
    if not _whole_number(value) or value < 1:
        raise ValueError("must be a whole number >= 1")
    return value


def non_negative_int(value: Any) -> int:
    if not _whole_number(value) or value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def optional_int(value: Any) -> int | None:
    if value is None or _whole_number(value):
        return value
    raise ValueError("must be a whole number or null")


def non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("must be a number >= 0")
    return value


def non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise ValueError("must be a string or null")


def str_list(value: Any) -> tuple[str, ...]:
    """A list of strings, or one comma-separated string (a flag's value)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def yaml_value(value: Any) -> Any:
    """A structured setting's value: as written in a settings file, or YAML text (a flag's or an
    environment variable's value)."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ValueError(f"must be YAML ({str(exc).splitlines()[0]})") from None


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError("must be true or false")


def bool_or_auto(value: Any) -> bool | None:
    """true/false, or auto (null): the engine decides (e.g. on for CUDA)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    try:
        return boolean(value)
    except ValueError:
        raise ValueError("must be true, false or auto") from None


def compile_mode(value: Any) -> str:
    """A torch.compile mode; YAML reads a bare off/on as false/true."""
    if isinstance(value, bool):
        value = "default" if value else "off"
    return choice(*COMPILE_MODES)(value)


compile_mode.choices = COMPILE_MODES


# --- the engine's options --------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOptions:
    """Everything ``load_engine`` takes besides the model: the settings a user chooses."""

    revision: str | None = setting(
        None,
        "hub revision of the model (branch, tag or commit); null: the main branch",
        optional_str,
    )
    device: str = setting(
        "auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", non_empty_str
    )
    dtype: str = setting(
        "auto",
        "auto (bf16 on CUDA, fp16 where bf16 is missing, fp32 on CPU), fp32, fp16 or bf16",
        choice("auto", "fp32", "fp16", "bf16"),
    )
    steps: int = setting(
        4,
        "DDIM denoising steps (v-prediction, trailing spacing: 999, 749, 499, 249 for 4); the "
        "model is distilled for 4",
        positive_int,
    )
    flow_model: str = setting(
        "raft_large",
        "optical flow network: raft_large or raft_small",
        choice("raft_large", "raft_small"),
    )
    flow_resolution: str = setting(
        "hr",
        "hr: RAFT on the bicubic x4 frames (the reference); lr: RAFT on the LR frames, the flow "
        "upsampled and scaled x4 (far less memory)",
        choice("hr", "lr"),
    )
    flow_weights: str | None = setting(
        None,
        "a RAFT state-dict file instead of torchvision's released weights from TORCH_HOME "
        "(random: random weights, for speed tests only)",
        optional_str,
    )
    attention: str = setting(
        "sdpa",
        "sdpa (torch's scaled_dot_product_attention) or xformers "
        "(needs pip install 'streamvsr[xformers]')",
        choice("sdpa", "xformers"),
    )
    unet: str | None = setting(
        None,
        "UNet override: a component folder (config.json + weights) or a weights file",
        optional_str,
    )
    controlnet: str | None = setting(
        None, "ControlNet override: a component folder or a weights file", optional_str
    )
    vae: str | None = setting(
        None, "temporal VAE override: a component folder or a weights file", optional_str
    )
    vae_tile: int = setting(
        0,
        "decode in overlapping latent tiles of this size (64: 256 px output tiles) to bound the "
        "decoder's memory on very large outputs (tiles see their crop of the temporal features); "
        "0: whole frames",
        non_negative_int,
    )
    channels_last: bool = setting(
        False,
        "NHWC memory format for UNet, ControlNet and VAE (tensor-core friendly): true or false",
        boolean,
    )
    sdpa_backend: str = setting(
        "auto",
        "restrict attention to one kernel: auto, flash, efficient, cudnn (CUDA only) or math",
        choice(*SDPA_BACKENDS),
    )
    compile: str = setting(
        "off",
        "torch.compile mode: off, default, reduce-overhead or max-autotune (both with CUDA "
        "graphs), max-autotune-no-cudagraphs; compiling takes minutes, so it happens at start, for "
        "warmup_sizes",
        compile_mode,
    )
    compile_backend: str = setting(
        "inductor",
        "inductor (generates kernels), aot_eager or eager (trace only: to debug compiling)",
        choice(*COMPILE_BACKENDS),
    )
    cudnn_benchmark: bool | None = setting(
        "auto",
        "cuDNN autotuning, each convolution shape timed once and its fastest kernel kept "
        "(serving sizes are fixed, so it pays): auto (on for CUDA), true or false",
        bool_or_auto,
    )
