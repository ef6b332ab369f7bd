"""Speed settings of the engine: memory format, attention kernels, cuDNN autotuning and
``torch.compile``.

Each is an option of ``load_engine`` and each keeps the results of the plain fp32 path (within
float tolerance; ``tests/engine/test_acceleration.py``).

Compiled networks have static frame sizes: one graph per frame size (and per batch of one or of
more). Compiling takes seconds to minutes, so it never happens inside a request:
``StreamDiffVSR.warm_up`` compiles (and with CUDA graphs records) the configured sizes and batch
sizes at start, and a batch of any other shape runs the eager networks (logged once). A stream's
first frame (no ControlNet, no temporal features: other graphs) always runs eager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import DeviceError
from .options import COMPILE_BACKENDS, COMPILE_MODES, SDPA_BACKENDS, EngineOptions

SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}  # "auto": any
CUDA_ONLY_SDPA = ("efficient", "cudnn")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Acceleration:
    """The speed settings of ``options`` put to work."""

    options: EngineOptions = field(default_factory=EngineOptions)

    def check(self, device: torch.device) -> None:
        """Raise a ``DeviceError`` naming the setting that cannot work on ``device``."""
        options = self.options
        if options.sdpa_backend not in SDPA_BACKENDS:
            raise DeviceError(
                f"unknown sdpa_backend {options.sdpa_backend!r} (use {', '.join(SDPA_BACKENDS)})"
            )
        if options.sdpa_backend in CUDA_ONLY_SDPA and device.type != "cuda":
            raise DeviceError(
                f"sdpa_backend {options.sdpa_backend!r} needs a CUDA device, the engine runs on "
                f"{device.type} (use auto, flash or math)"
            )
        if options.compile not in COMPILE_MODES:
            modes = ", ".join(COMPILE_MODES)
            raise DeviceError(f"unknown compile mode {options.compile!r} (use {modes})")
        if options.compile_backend not in COMPILE_BACKENDS:
            backends = ", ".join(COMPILE_BACKENDS)
            raise DeviceError(
                f"unknown compile_backend {options.compile_backend!r} (use {backends})"
            )

    @property
    def cuda_graphs(self) -> bool:
        options = self.options
        return options.compile in CUDA_GRAPH_MODES and options.compile_backend == "inductor"

    @contextlib.contextmanager
    def attention(self) -> Iterator[None]:
        """Restrict scaled_dot_product_attention to the chosen backend (for eager and tracing)."""
        backend = SDPA_KERNELS.get(self.options.sdpa_backend)
        if backend is None:
            yield
        else:
            with sdpa_kernel([backend]):
                yield

    def tune_kernels(self, device: torch.device) -> None:
        """cuDNN autotuning: each convolution shape is timed once and its fastest kernel kept.
        Serving sizes are fixed (warm-up sizes x batch sizes), so the one-off cost pays for itself
        (process-wide: cuDNN has no per-model switch)."""
        if device.type == "cuda":
            benchmark = self.options.cudnn_benchmark
            enabled = True if benchmark is None else benchmark
            torch.backends.cudnn.benchmark = enabled

    def memory_format(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.options.channels_last:
            return module.to(memory_format=torch.channels_last)
        return module


# Sizes stay static (fast kernels); the batch dimension is dynamic, so batch sizes 2, 3, ... share
# one graph (CUDA graphs still record each). Without automatic dynamic shapes a new frame size gets
# its own static graph instead of turning the first one dynamic.
_DYNAMO_CONFIG = {"automatic_dynamic_shapes": False, "recompile_limit": 64}


def compile_module(module, mode: str, backend: str = "inductor"):
    if backend != "inductor":  # modes are inductor options
        return torch.compile(module, backend=backend)
    return torch.compile(module, mode=mode)


def mark_batch_dynamic(value) -> None:
    """Let the batch dimension of every input tensor (batch > 1) vary without recompiling."""
    if isinstance(value, torch.Tensor):
        if value.ndim > 0 and value.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(value, 0)
    elif isinstance(value, (list, tuple)):
        for item in value:
            mark_batch_dynamic(item)


def detach_from_graphs(value):
    """Copy the outputs of a CUDA-graph replay: the next replay reuses their memory."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(detach_from_graphs(v) for v in value)
    return value


class CompiledCall:
    """A compiled module; with CUDA graphs each call is a new graph iteration whose outputs are
    copied out, so that they stay valid while later graphs replay."""

    def __init__(self, module: torch.nn.Module, acceleration: Acceleration):
        options = acceleration.options
        self.function = compile_module(module, options.compile, options.compile_backend)
        self.cuda_graphs = acceleration.cuda_graphs

    def __call__(self, *args):
        mark_batch_dynamic(args)
        with torch._dynamo.config.patch(_DYNAMO_CONFIG):
            if not self.cuda_graphs:
                return self.function(*args)
            torch.compiler.cudagraph_mark_step_begin()
            return detach_from_graphs(self.function(*args))
