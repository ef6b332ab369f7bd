"""The causal engine end to end on the tiny random checkpoint: shapes, batching many streams,
reproducibility, the per-frame algorithm (observed through hooks), restarts and memory."""

from __future__ import annotations

import gc
from contextlib import contextmanager

import numpy as np
import psutil
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor

from streamvsr.engine import FrameRequest
from streamvsr.engine.flow import flow_warp


def to_unit(frame: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) float in [-1, 1], as the spec normalises LR frames."""
    return torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


def max_pixel_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max())


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(24, 32), (18, 26), (9, 13)])
def test_output_is_exactly_four_times_the_input(tiny_engine, make_frames, stream, size):
    """The output is exactly 4H x 4W uint8 RGB for every H, W, also when they are not multiples of
    4 or 8: unlike the reference, which floors H and W to multiples of 4 (Lanczos resize), the
    engine neither crops nor resizes. 18 x 26 and 9 x 13 exercise odd latent sizes in the UNet and
    ControlNet and padding for RAFT."""
    height, width = size
    frames = make_frames(3, height, width, seed=4)
    outputs, states = stream(tiny_engine, frames)
    for output in outputs:
        assert output.shape == (4 * height, 4 * width, 3)
        assert output.dtype == torch.uint8
    assert [s.frame_index for s in states] == [1, 2, 3]
    assert states[-1].prev_hr.shape == (1, 3, 4 * height, 4 * width)
    assert states[-1].prev_lr.shape == (1, 3, height, width)
    assert states[-1].input_size == size
    # Frames 1 and 2 go through the temporal path and do produce different pictures.
    assert max_pixel_difference(outputs[1], outputs[2]) > 0


def test_rejects_frames_that_are_not_uint8_rgb(tiny_engine):
    state = tiny_engine.new_session(seed=0)
    with pytest.raises(ValueError):
        tiny_engine.step([FrameRequest(state, np.zeros((8, 8, 3), dtype=np.float32))])
    with pytest.raises(ValueError):
        tiny_engine.step([FrameRequest(state, np.zeros((8, 8, 4), dtype=np.uint8))])


# --- many streams ------------------------------------------------------------------------------

# Session -> (noise seed, content seed, LR size, first tick). Session "c" starts two ticks late, so
# ticks 2 and 3 mix first frames and continuing frames in one batch; "d" has another frame size, so
# every step call holds two size groups.
SESSIONS = {
    "a": (11, 1, (16, 24), 0),
    "b": (22, 2, (16, 24), 0),
    "c": (33, 3, (16, 24), 2),
    "d": (44, 4, (8, 12), 0),
}
TICKS = 4


def session_frames(make_frames, name: str, content_seed: int | None = None):
    _, seed, (height, width), first = SESSIONS[name]
    count = TICKS - first
    return make_frames(count, height, width, seed=seed if content_seed is None else content_seed)


def run_interleaved(eng, frames: dict[str, list[np.ndarray]]):
    """All sessions advanced together: one step call per tick, request order varying by tick."""
    states = {name: eng.new_session(seed=SESSIONS[name][0]) for name in frames}
    outputs = {name: [] for name in frames}
    history = {name: [] for name in frames}
    for tick in range(TICKS):
        names = [name for name in frames if tick >= SESSIONS[name][3]]
        if tick % 2:
            names.reverse()
        requests = [
            FrameRequest(states[name], frames[name][tick - SESSIONS[name][3]]) for name in names
        ]
        results = eng.step(requests)
        assert len(results) == len(requests)
        for name, result in zip(names, results, strict=True):
            states[name] = result.state
            outputs[name].append(result.frame.clone())
            history[name].append(result.state)
    return outputs, history


@pytest.fixture(scope="module")
def sequential_runs(tiny_engine, make_frames, stream):
    """Each session run alone, one frame per step call."""
    return {
        name: stream(tiny_engine, session_frames(make_frames, name), seed=SESSIONS[name][0])
        for name in SESSIONS
    }


@pytest.fixture(scope="module")
def interleaved_run(tiny_engine, make_frames):
    frames = {name: session_frames(make_frames, name) for name in SESSIONS}
    return run_interleaved(tiny_engine, frames)


def test_batched_streams_equal_sequential_streams(sequential_runs, interleaved_run):
    outputs, history = interleaved_run
    for name in SESSIONS:
        alone_outputs, alone_states = sequential_runs[name]
        assert len(outputs[name]) == len(alone_outputs) == TICKS - SESSIONS[name][3]
        for n, (together, alone) in enumerate(zip(outputs[name], alone_outputs, strict=True)):
            assert together.shape == alone.shape
            assert max_pixel_difference(together, alone) <= 1, (name, n)
        for n, (together, alone) in enumerate(zip(history[name], alone_states, strict=True)):
            assert together.frame_index == alone.frame_index == n + 1
            assert together.seed == alone.seed
            torch.testing.assert_close(together.prev_hr, alone.prev_hr, rtol=0, atol=1e-4)
            torch.testing.assert_close(together.prev_lr, alone.prev_lr, rtol=0, atol=0)


def test_sessions_do_not_share_state(tiny_engine, make_frames, interleaved_run):
    """Changing one session's content changes its output only."""
    frames = {name: session_frames(make_frames, name) for name in SESSIONS}
    frames["b"] = session_frames(make_frames, "b", content_seed=99)
    changed, changed_states = run_interleaved(tiny_engine, frames)
    original, original_states = interleaved_run
    for name in ("a", "c", "d"):
        for n, (new, old) in enumerate(zip(changed[name], original[name], strict=True)):
            assert max_pixel_difference(new, old) <= 1, (name, n)
        for new, old in zip(changed_states[name], original_states[name], strict=True):
            torch.testing.assert_close(new.prev_hr, old.prev_hr, rtol=0, atol=1e-4)
    # (The tiny random model's output depends only weakly on the content: a few levels.)
    for new, old in zip(changed["b"], original["b"], strict=True):
        assert max_pixel_difference(new, old) > 2
    for new, old in zip(changed_states["b"], original_states["b"], strict=True):
        assert (new.prev_hr - old.prev_hr).abs().max() > 1e-2


def test_state_does_not_pin_other_sessions_memory(tiny_engine, make_frames):
    """A session's state holds its own tensors only, not views of the whole batch: otherwise a
    stalled stream keeps every other stream's frame of that tick alive (and nbytes() under-reports).
    """
    states = [tiny_engine.new_session(seed=s) for s in range(3)]
    requests = [
        FrameRequest(state, make_frames(1, 8, 12, seed=s)[0]) for s, state in enumerate(states)
    ]
    results = tiny_engine.step(requests)
    for result in results:
        held = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (result.state.prev_hr, result.state.prev_lr, result.state.flow_features)
        }
        assert sum(held.values()) == result.state.nbytes()


# --- reproducibility ---------------------------------------------------------------------------


def test_explicit_noise_reproduces_whatever_the_seed(tiny_engine, make_frames, stream):
    frames = make_frames(2, 16, 24, seed=5)
    generator = torch.Generator().manual_seed(123)
    noises = [torch.randn(1, 4, 16, 24, generator=generator) for _ in frames]
    first, first_states = stream(tiny_engine, frames, seed=1, noises=noises)
    second, second_states = stream(tiny_engine, frames, seed=2, noises=noises)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(first_states[-1].prev_hr, second_states[-1].prev_hr, rtol=0, atol=0)
    # Other noise, other picture.
    other = [torch.randn(1, 4, 16, 24, generator=generator) for _ in frames]
    changed, _ = stream(tiny_engine, frames, seed=1, noises=other)
    assert max_pixel_difference(changed[0], first[0]) > 2


def test_seed_reproduces(tiny_engine, make_frames, stream):
    frames = make_frames(2, 16, 24, seed=6)
    same_a, _ = stream(tiny_engine, frames, seed=7)
    same_b, _ = stream(tiny_engine, frames, seed=7)
    other, _ = stream(tiny_engine, frames, seed=8)
    for a, b in zip(same_a, same_b, strict=True):
        assert torch.equal(a, b)
    for a, c in zip(same_a, other, strict=True):
        assert max_pixel_difference(a, c) > 2


def test_noise_of_wrong_shape_is_rejected(tiny_engine, make_frames):
    state = tiny_engine.new_session(seed=0)
    frame = make_frames(1, 16, 24)[0]
    with pytest.raises(ValueError, match="noise"):
        tiny_engine.step([FrameRequest(state, frame, torch.randn(1, 4, 24, 16))])


# --- the per-frame algorithm, observed through hooks -------------------------------------------


def argument(args: tuple, kwargs: dict, index: int, name: str):
    """A call's argument, whether it was passed by position or by name."""
    return args[index] if len(args) > index else kwargs[name]


@contextmanager
def recording(eng):
    """Record the calls of the ControlNet (its condition embedding, once per frame, and its
    network, once per step), UNet, flow estimator and VAE decoder."""
    calls: dict[str, list] = {"condition": [], "controlnet": [], "unet": [], "flow": []}
    calls["decoder"], calls["decoder_out"] = [], []

    def keep(key):
        def hook(module, args, kwargs):
            calls[key].append((args, dict(kwargs)))

        return hook

    handles = [
        eng.controlnet.controlnet_cond_embedding.register_forward_pre_hook(
            keep("condition"), with_kwargs=True
        ),
        eng.controlnet.conv_in.register_forward_pre_hook(keep("controlnet"), with_kwargs=True),
        eng.unet.register_forward_pre_hook(keep("unet"), with_kwargs=True),
        eng.flow.register_forward_hook(
            lambda module, args, output: calls["flow"].append((args, output))
        ),
        eng.vae.decoder.register_forward_pre_hook(keep("decoder"), with_kwargs=True),
        eng.vae.decoder.register_forward_hook(
            lambda module, args, output: calls["decoder_out"].append(output)
        ),
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def step_recorded(eng, state, frame):
    with recording(eng) as calls:
        [result] = eng.step([FrameRequest(state, frame)])
    return result, calls


def has_residuals(kwargs: dict) -> bool:
    return (
        kwargs.get("down_block_additional_residuals") is not None
        and kwargs.get("mid_block_additional_residual") is not None
    )


def test_first_frame_runs_the_plain_unet(tiny_engine, make_frames):
    frame = make_frames(1, 16, 24, seed=8)[0]
    result, calls = step_recorded(tiny_engine, tiny_engine.new_session(seed=0), frame)
    assert calls["controlnet"] == []
    assert calls["flow"] == []
    assert len(calls["unet"]) == tiny_engine.steps == 4
    assert not any(has_residuals(kwargs) for _, kwargs in calls["unet"])
    # The decoder runs without temporal features.
    assert len(calls["decoder"]) == 1
    args, kwargs = calls["decoder"][0]
    assert (args[1] if len(args) > 1 else kwargs.get("features")) is None
    assert result.state.frame_index == 1


def test_later_frames_are_guided_by_the_warped_previous_output(tiny_engine, make_frames):
    frames = make_frames(3, 16, 24, seed=9)
    state = tiny_engine.new_session(seed=3)
    [first] = tiny_engine.step([FrameRequest(state, frames[0])])
    [second] = tiny_engine.step([FrameRequest(first.state, frames[1])])
    previous = second.state
    result, calls = step_recorded(tiny_engine, previous, frames[2])
    assert result.state.frame_index == 3

    # Flow from this LR frame to the previous one (given as its RAFT encoding, kept from the
    # previous step), both in [-1, 1]; HR-sized.
    [(flow_args, (flow, _))] = calls["flow"]
    torch.testing.assert_close(flow_args[0], to_unit(frames[2]))
    assert torch.equal(flow_args[1], tiny_engine.flow.encode(previous.prev_lr))
    assert flow.shape == (1, 2, 64, 96)

    # The ControlNet's condition is the previous output, warped by the flow; it is embedded once
    # per frame, and the ControlNet runs at every step.
    expected_condition = flow_warp(previous.prev_hr.float(), flow)
    [(condition_args, _)] = calls["condition"]
    torch.testing.assert_close(condition_args[0], expected_condition)
    assert len(calls["controlnet"]) == tiny_engine.steps == 4
    assert len(calls["unet"]) == 4
    timesteps = []
    for (c_args, _), (u_args, u_kwargs) in zip(calls["controlnet"], calls["unet"], strict=True):
        # Same 7-channel input, timestep and prompt as the UNet.
        sample = argument(u_args, u_kwargs, 0, "sample")
        assert sample.shape == (1, 7, 16, 24)
        torch.testing.assert_close(c_args[0], sample)
        torch.testing.assert_close(sample[:, 4:], to_unit(frames[2]))
        timestep = argument(u_args, u_kwargs, 1, "timestep")
        timesteps.append(int(timestep))
        torch.testing.assert_close(u_kwargs["encoder_hidden_states"], tiny_engine.prompt_embeds)
        # Its 12 down residuals and the mid residual go into the UNet: those diffusers'
        # ControlNetModel gives for this sample, timestep, prompt and condition (scale 1).
        assert has_residuals(u_kwargs)
        with torch.inference_mode():
            down, mid = tiny_engine.controlnet(
                sample,
                timestep,
                encoder_hidden_states=tiny_engine.prompt_embeds,
                controlnet_cond=expected_condition,
                conditioning_scale=1.0,
                return_dict=False,
            )
        residuals = u_kwargs["down_block_additional_residuals"]
        assert len(residuals) == len(down) == 12
        for got, expected in zip(residuals, down, strict=True):
            torch.testing.assert_close(got, expected)
        torch.testing.assert_close(u_kwargs["mid_block_additional_residual"], mid)
    assert timesteps == [999, 749, 499, 249]

    # The decoder gets the encoder's temporal features of the warped image.
    [(d_args, d_kwargs)] = calls["decoder"]
    features = d_args[1] if len(d_args) > 1 else d_kwargs["features"]
    with torch.inference_mode():
        expected_features = tiny_engine.vae.encoder.temporal_features(expected_condition)
    assert len(features) == len(expected_features) == 7
    for got, expected in zip(features, expected_features, strict=True):
        torch.testing.assert_close(got, expected)

    # The state keeps the decoder's output unclamped (the next frame's warp source); the frame
    # shown is (x / 2 + 0.5).clamp(0, 1) as uint8.
    [decoded] = calls["decoder_out"]
    torch.testing.assert_close(result.state.prev_hr, decoded, rtol=0, atol=0)
    shown = ((decoded[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    assert max_pixel_difference(result.frame, shown) <= 1


def test_size_change_restarts_the_chain(tiny_engine, make_frames):
    big = make_frames(2, 16, 24, seed=10)
    small = make_frames(2, 8, 12, seed=11)
    state = tiny_engine.new_session(seed=4)
    for frame in big:
        [result] = tiny_engine.step([FrameRequest(state, frame)])
        state = result.state
    assert state.frame_index == 2

    result, calls = step_recorded(tiny_engine, state, small[0])
    assert result.frame.shape == (32, 48, 3)
    assert result.state.frame_index == 1
    assert result.state.input_size == (8, 12)
    assert result.state.prev_hr.shape == (1, 3, 32, 48)
    assert calls["controlnet"] == [] and calls["flow"] == []

    result, calls = step_recorded(tiny_engine, result.state, small[1])
    assert result.state.frame_index == 2
    assert len(calls["controlnet"]) == 4
    assert calls["condition"][0][0][0].shape == (1, 3, 32, 48)


# --- memory ------------------------------------------------------------------------------------


def live_tensors() -> tuple[int, int]:
    """(number of live torch tensors with data, bytes of their distinct storages). Tensors without
    data (fake tensors that torch.compile keeps from tracing, in other tests) are not counted."""
    gc.collect()
    count, storages = 0, {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not isinstance(obj, FakeTensor):
            count += 1
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return count, sum(storages.values())


def test_memory_per_session_is_constant(load_tiny, make_frames):
    """110 frames of one stream: the state keeps its size and nothing accumulates. One DDIM step
    keeps this long run fast; what a frame leaves behind does not depend on the step count."""
    eng = load_tiny(steps=1)
    frames = make_frames(10, 8, 8, seed=12)
    process = psutil.Process()
    state = eng.new_session(seed=5)
    sizes, marks = [], {}
    for n in range(111):
        [result] = eng.step([FrameRequest(state, frames[n % len(frames)])])
        state = result.state
        sizes.append(state.nbytes())
        if n in (10, 110):
            del result
            marks[n] = (*live_tensors(), process.memory_info().rss)
    assert state.frame_index == 111
    # prev_hr + prev_lr + RAFT-small's encoding (128 channels at 1/8 of the HR frame, padded to
    # RAFT's 128 px minimum), fp32.
    assert sizes[0] == (3 * 32 * 32 + 3 * 8 * 8 + 128 * 16 * 16) * 4
    assert set(sizes) == {sizes[0]}
    count_10, bytes_10, rss_10 = marks[10]
    count_110, bytes_110, rss_110 = marks[110]
    assert abs(count_110 - count_10) <= 2, (count_10, count_110)
    assert abs(bytes_110 - bytes_10) <= 64 * 1024, (bytes_10, bytes_110)
    assert rss_110 - rss_10 < 30 * 2**20, (rss_10, rss_110)


# --- flow mode ---------------------------------------------------------------------------------


def test_flow_at_lr_runs_and_differs_from_hr(tiny_engine, load_tiny, make_frames, stream):
    lr_engine = load_tiny(flow_resolution="lr")
    frames = make_frames(3, 24, 32, seed=13)
    hr_out, hr_states = stream(tiny_engine, frames, seed=6)
    lr_out, lr_states = stream(lr_engine, frames, seed=6)
    assert [o.shape for o in lr_out] == [o.shape for o in hr_out] == [(96, 128, 3)] * 3
    # Frame 0 uses no flow: identical. Later frames are warped with another flow.
    assert torch.equal(lr_out[0], hr_out[0])
    assert (lr_states[1].prev_hr - hr_states[1].prev_hr).abs().max() > 1e-4
    assert (lr_states[2].prev_hr - hr_states[2].prev_hr).abs().max() > 1e-4


# --- work started ahead ------------------------------------------------------------------------


def test_flow_started_ahead_gives_the_same_frames(tiny_engine, make_frames, stream):
    """launch + prefetch_flow (the next frame's flow started while a step runs, as the offline
    upscaler does) produces exactly the frames of plain steps."""
    frames = make_frames(4, 16, 24, seed=30)
    expected, _ = stream(tiny_engine, frames, seed=7)
    state, flow, outputs = tiny_engine.new_session(seed=7), None, []
    for n, frame in enumerate(frames):
        pending = tiny_engine.launch([FrameRequest(state, frame, flow=flow)])
        nxt = frames[n + 1] if n + 1 < len(frames) else None
        flow = None if nxt is None else tiny_engine.prefetch_flow(frame, nxt)
        [result] = pending.results()
        state = result.state
        outputs.append(result.frame)
    assert [max_pixel_difference(a, b) for a, b in zip(outputs, expected)] == [0, 0, 0, 0]
    # Nothing to start across a size change (the chain restarts).
    assert tiny_engine.prefetch_flow(frames[0], make_frames(1, 8, 12)[0]) is None
