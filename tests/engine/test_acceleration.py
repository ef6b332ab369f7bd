"""Speed settings keep the frames of the plain fp32 path, and compiling happens only at warm-up.

Compiled runs use the ``eager`` compile backend: it goes through the same dynamo capture, guards,
dynamic batch dimension and warm-up as inductor, in seconds instead of the ~15 minutes inductor
takes to build kernels for the tiny model on two CPU cores. (Inductor itself was checked by hand
on this machine: the same frames, max |diff| 0.)
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from streamvsr.config import ConfigError, load_settings
from streamvsr.engine import DeviceError, EngineOptions, FrameRequest, load_engine
from streamvsr.engine.acceleration import Acceleration

SIZE = (16, 24)


def max_difference(outputs, expected) -> int:
    return max(int((a.int() - b.int()).abs().max()) for a, b in zip(outputs, expected, strict=True))


def run_batch(eng, clips, seeds):
    """Advance one session per clip together, one batched step per frame."""
    states = [eng.new_session(seed=seed) for seed in seeds]
    outputs = []
    for frames in zip(*clips, strict=True):
        results = eng.step([FrameRequest(s, f) for s, f in zip(states, frames)])
        states = [r.state for r in results]
        outputs += [r.frame.clone() for r in results]
    return outputs


@pytest.fixture(scope="module")
def clips(make_frames):
    return [make_frames(3, *SIZE, seed=20), make_frames(3, *SIZE, seed=21)]


@pytest.fixture(scope="module")
def plain_outputs(tiny_engine, clips):
    return run_batch(tiny_engine, clips[:1], [5])


@pytest.mark.parametrize(
    ("options", "tolerance"),
    [
        ({"channels_last": True}, 1),
        ({"sdpa_backend": "math"}, 1),
        ({"sdpa_backend": "flash"}, 1),
        ({"channels_last": True, "sdpa_backend": "math"}, 1),
        ({"dtype": "bf16"}, 2),
        ({"dtype": "fp16"}, 2),
    ],
    ids=["channels_last", "sdpa_math", "sdpa_flash", "channels_last+math", "bf16", "fp16"],
)
def test_speed_settings_keep_the_plain_frames(load_tiny, clips, plain_outputs, options, tolerance):
    """Same frames as the plain fp32 path: within one grey level where only the order of float
    operations changes, two for bf16/fp16 weights (measured: max 1, mean 0.1 grey levels)."""
    outputs = run_batch(load_tiny(**options), clips[:1], [5])
    assert max_difference(outputs, plain_outputs) <= tolerance


@pytest.fixture(scope="module")
def compiled_engine(load_tiny):
    eng = load_tiny(compile="default", compile_backend="eager")
    eng.warm_up([SIZE], [1, 2])
    return eng


def test_warm_up_prepares_every_batch_size(compiled_engine):
    height, width = SIZE
    assert compiled_engine.warm_shapes == {(batch, height, width) for batch in (1, 2)}


def test_compiled_engine_keeps_the_frames_and_never_compiles_in_a_request(
    compiled_engine, tiny_engine, clips, make_frames, caplog
):
    compiled_frames = counters["frames"]["total"]  # frames dynamo has compiled so far
    with caplog.at_level(logging.INFO, logger="streamvsr.engine.stream_diffvsr"):
        single = run_batch(compiled_engine, clips[:1], [5])
        batched = run_batch(compiled_engine, clips, [5, 6])
        assert not any("no compiled networks" in r.message for r in caplog.records)
        # A size that was not warmed up runs the eager networks, and says so once.
        cold = make_frames(2, 8, 12, seed=22)
        run_batch(compiled_engine, [cold], [1])
        run_batch(compiled_engine, [cold], [1])
    assert counters["frames"]["total"] == compiled_frames
    notices = [r.message for r in caplog.records if "no compiled networks" in r.message]
    assert notices == [
        "no compiled networks for 1 x 12x8 (not in the warm-up sizes): running eager"
    ]

    assert max_difference(single, run_batch(tiny_engine, clips[:1], [5])) <= 1
    assert max_difference(batched, run_batch(tiny_engine, clips, [5, 6])) <= 1


def test_settings_that_cannot_work_are_refused_naming_them(load_tiny):
    with pytest.raises(DeviceError, match="sdpa_backend 'efficient' needs a CUDA device"):
        load_tiny(sdpa_backend="efficient")
    with pytest.raises(DeviceError, match="unknown compile mode 'fast'"):
        load_tiny(compile="fast")
    options = EngineOptions(device="cuda", sdpa_backend="efficient")
    with pytest.raises(DeviceError, match="the engine runs on cpu"):  # keywords override options
        load_engine("unused", options, device="cpu")


def test_speed_settings_are_validated_in_the_config():
    engine = load_settings(
        env={"STREAMVSR_ENGINE__COMPILE": "off", "STREAMVSR_ENGINE__CHANNELS_LAST": "true"},
        overrides={"engine": {"warmup_sizes": "320x180, 480x270", "sdpa_backend": "flash"}},
    ).engine
    assert engine.compile == "off"  # YAML reads a bare off as false
    assert engine.channels_last is True
    assert engine.warmup_sizes == ((180, 320), (270, 480))
    assert engine.sdpa_backend == "flash"
    assert load_settings(overrides={"engine": {"compile": "reduce-overhead"}}).engine.compile == (
        "reduce-overhead"
    )
    assert engine.cudnn_benchmark is None  # auto, the default
    for value, expected in [("auto", None), ("false", False), (True, True)]:
        settings = load_settings(overrides={"engine": {"cudnn_benchmark": value}}).engine
        assert settings.cudnn_benchmark is expected
    for key, value in [
        ("compile", "fastest"),
        ("sdpa_backend", "xformers"),
        ("channels_last", "maybe"),
        ("warmup_sizes", "320by180"),
        ("cudnn_benchmark", "sometimes"),
    ]:
        with pytest.raises(ConfigError, match=f"engine.{key}"):
            load_settings(overrides={"engine": {key: value}})


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [(None, "cuda", True), (False, "cuda", False), (True, "cuda", True), (True, "cpu", None)],
)
def test_cudnn_autotuning_is_on_for_cuda_unless_turned_off(setting, device, expected):
    before = torch.backends.cudnn.benchmark
    try:
        for start in (False, True):  # a CPU engine leaves the process-wide flag as it was
            torch.backends.cudnn.benchmark = start
            options = EngineOptions(cudnn_benchmark=setting)
            Acceleration(options).tune_kernels(torch.device(device))
            assert torch.backends.cudnn.benchmark == (start if expected is None else expected)
    finally:
        torch.backends.cudnn.benchmark = before


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_engines(load_tiny):
    """bf16 on the GPU: eager, and reduce-overhead (inductor + CUDA graphs) warmed up for batches
    of 1 and 2 (compiled once for the tests below: inductor takes a while)."""
    graphs = load_tiny(device="cuda", dtype="bf16", compile="reduce-overhead")
    graphs.warm_up([SIZE], [1, 2])
    return {"off": load_tiny(device="cuda", dtype="bf16"), "reduce-overhead": graphs}


@needs_cuda
def test_cuda_graphs_keep_the_frames(cuda_engines, clips):
    graphs, eager = cuda_engines["reduce-overhead"], cuda_engines["off"]
    assert max_difference(run_batch(graphs, clips, [5, 6]), run_batch(eager, clips, [5, 6])) <= 2


@needs_cuda
@pytest.mark.parametrize("compile_mode", ["off", "reduce-overhead"])
def test_a_step_never_waits_for_the_gpu_until_its_frames_are_read(
    cuda_engines, clips, compile_mode
):
    """The server's path (YUV frames), eager and compiled, first and continuing frames: no host
    synchronisation while a step is queued (pinned uploads, no .item(), no implicit copies); the
    only wait is ``results()``, which reads the frames. (``test_host_syncs.py`` checks the eager
    path without a GPU.)"""
    eng = cuda_engines[compile_mode]
    states = [eng.new_session(seed=1)]
    for frame in clips[0]:  # a first frame, then continuing ones
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pending = eng.launch([FrameRequest(states[0], frame)], pixel_format="yuv420p")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        [result] = pending.results()
        states = [result.state]
        assert result.frame.shape == (SIZE[0] * 4 * 3 // 2, SIZE[1] * 4)
    assert states[0].frame_index == len(clips[0])
