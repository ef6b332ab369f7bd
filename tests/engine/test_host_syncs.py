"""No step of the engine makes the host wait for the GPU, checked without a GPU.

The engine runs on fake CUDA tensors (``FakeTensorMode``: the device is "cuda", no kernel runs,
the way inductor traces for GPUs), and a dispatch mode records every operation that blocks the
host on a real GPU: a copy between the host and the device that is not ``non_blocking``, reading a
device value on the host (``.item()``), or an operation whose output size depends on device data.
The CUDA runtime objects the engine touches besides tensors (streams, events) get stand-ins that do
nothing: only the tensor operations are under test. ``test_acceleration.py`` checks the same on a
real GPU with ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from streamvsr.engine import FrameRequest
from streamvsr.engine.base import to_yuv420p
from streamvsr.engine.stream_diffvsr import StreamDiffVSR

# Operations that wait for the device's data: host reads, and outputs sized by device values.
_WAITING_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "unique"}


class HostSyncRecorder(TorchDispatchMode):
    """Records the operations that would make the host wait for a CUDA device."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self.operations = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.operations += 1
        why = _why_it_waits(func.overloadpacket.__name__, args, kwargs)
        if why:
            self.found.append(why)
        return func(*args, **kwargs)


def _why_it_waits(name: str, args, kwargs) -> str | None:
    if name in _WAITING_OPS and _on_cuda(args):
        return name
    if name == "_to_copy":
        source, target, asynchronous = (
            args[0].device,
            kwargs.get("device"),
            kwargs.get("non_blocking"),
        )
    elif name == "copy_":
        source, target = args[1].device, args[0].device
        asynchronous = kwargs.get("non_blocking") or (len(args) > 2 and args[2])
    else:
        return None
    if not asynchronous and _crosses_to_or_from_cuda(source, target):
        return f"{name} {source} -> {target}"
    return None


def _on_cuda(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args)


def _crosses_to_or_from_cuda(source: torch.device, target) -> bool:
    """A copy between the host and a CUDA device (either way)."""
    if target is None:
        return False
    kinds = {source.type, torch.device(target).type}
    return kinds == {"cpu", "cuda"}


class _Stand_in:
    """A CUDA stream or event that does nothing (no driver here)."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args):
        pass

    def synchronize(self):
        pass

    def wait_event(self, *args):
        pass


@contextlib.contextmanager
def fake_cuda():
    """Inside: fake CUDA tensors and stand-in streams/events; gives the fake tensor mode."""
    with contextlib.ExitStack() as stack:
        for name in ("Event", "Stream"):
            stack.enter_context(mock.patch(f"torch.cuda.{name}", _Stand_in))
        stack.enter_context(mock.patch("torch.cuda.current_stream", _Stand_in))
        # cuDNN's grid sampler has no fake kernel; which kernel runs does not change any copy.
        stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        yield stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))


def to_fake_cuda(network: torch.nn.Module, mode: FakeTensorMode) -> None:
    """Every weight and buffer of ``network`` becomes a fake CUDA tensor (in place)."""
    for module in network.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    table[name] = mode.from_tensor(tensor).to("cuda")


@pytest.fixture
def fake_cuda_engine(load_tiny):
    """A tiny engine (loaded for real, on the CPU) whose networks are moved to fake CUDA."""
    cpu = load_tiny()
    with fake_cuda() as mode:
        for network in (cpu.unet, cpu.controlnet, cpu.vae, cpu.flow):
            to_fake_cuda(network, mode)
        prompt = mode.from_tensor(cpu.prompt_embeds)
        yield StreamDiffVSR(cpu.unet, cpu.controlnet, cpu.vae, cpu.sampler, prompt, cpu.flow)


def launch(eng: StreamDiffVSR, requests: list[FrameRequest], pixel_format: str):
    """``eng.launch`` under ``no_grad`` instead of inference mode (the same operations): inference
    mode lets copies of host tensors bypass dispatch modes, so the recorder would miss them."""
    with torch.no_grad():
        return StreamDiffVSR.launch.__wrapped__(eng, requests, None, pixel_format)


@pytest.mark.parametrize("pixel_format", ["yuv420p", "rgb24"])
def test_a_step_never_blocks_the_host(fake_cuda_engine, pixel_format):
    """First and continuing frames, as the server launches them (YUV) and as upscale does."""
    eng = fake_cuda_engine
    assert eng.device.type == "cuda"
    frame = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    states = [eng.new_session(seed=1), eng.new_session(seed=2)]
    for n in range(3):  # a first frame, then continuing ones (the second reuses a flow encoding)
        recorder = HostSyncRecorder()
        with recorder:
            pending = launch(eng, [FrameRequest(s, frame) for s in states], pixel_format)
        assert recorder.found == [], f"frame {n}: {recorder.found}"
        assert recorder.operations > 1000  # it saw the whole step
        states = pending.states
    assert states[0].frame_index == 3 and states[0].flow_features.device.type == "cuda"


def test_the_recorder_sees_blocking_copies():
    """What it is there to catch: torchvision's RAFT copies its grids from the host (twice, and
    once per update), and a tensor of Python numbers made on the device is a blocking upload."""
    from torchvision.models.optical_flow import raft_small

    raft = raft_small(weights=None).eval()
    recorder = HostSyncRecorder()
    with fake_cuda() as mode:
        to_fake_cuda(raft, mode)
        image = torch.zeros(1, 3, 128, 128, device="cuda")
        with recorder:
            raft(image, image, num_flow_updates=3)
            image.new_tensor([0.5, 0.25])
            to_yuv420p(torch.zeros(1, 3, 8, 8, device="cuda"))  # ours: no copy
            with pytest.raises(DataDependentOutputException):  # fake tensors have no value
                image.sum().item()
    assert len(recorder.found) == 2 + 3 + 1 + 1, recorder.found
