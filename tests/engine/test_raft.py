"""The streaming RAFT: torchvision's flow from the same encodings, bit for bit; each frame of a
stream encoded once, and the reused encoding is the one a fresh encoding would give."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.optical_flow import raft_large, raft_small

from streamvsr.engine import FrameRequest
from streamvsr.engine.raft import StreamRaft


@pytest.fixture(scope="module", params=["raft_small", "raft_large"])
def raft(request):
    torch.manual_seed(7)
    factory = {"raft_small": raft_small, "raft_large": raft_large}[request.param]
    return factory(weights=None).eval().requires_grad_(False)


def image_pair(batch: int, height: int, width: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    first = torch.rand(batch, 3, height, width + 3, generator=generator) * 2 - 1
    return first[..., 3:], first[..., :-3]  # the second is the first shifted by 3 pixels


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 128, 160), (2, 136, 128)])
def test_flow_equals_torchvisions_from_the_same_encodings(raft, batch, height, width):
    image1, image2 = image_pair(batch, height, width, seed=batch)
    updates = 5
    with torch.inference_mode():
        expected = raft(image1, image2, num_flow_updates=updates)
        # torchvision encodes both images in one batch; hand the same encodings to ours.
        features, previous = raft.feature_encoder(torch.cat([image1, image2])).chunk(2)
        flow = StreamRaft(raft, num_updates=updates)(image1, features, previous)
    assert flow.shape == (batch, 2, height, width)
    assert expected[-1].abs().max() > 0.1  # not vacuous
    assert torch.equal(flow, expected[-1])  # max |diff| 0: same operations, same order


def test_encoding_frames_separately_only_changes_rounding(raft):
    """One frame encoded at a time (as a stream does) instead of the pair together: CPU
    convolutions may pick another kernel for another batch size, nothing more."""
    image1, image2 = image_pair(1, 128, 128, seed=3)
    stream_raft = StreamRaft(raft, num_updates=4)
    with torch.inference_mode():
        expected = raft(image1, image2, num_flow_updates=4)[-1]
        flow = stream_raft(image1, stream_raft.encode(image1), stream_raft.encode(image2))
    torch.testing.assert_close(flow, expected, rtol=1e-4, atol=1e-4)


def test_a_stream_reuses_each_frames_encoding_exactly(tiny_engine, make_frames):
    """Frame n's flow uses frame n-1's encoding kept in the state: the same flow as encoding
    frame n-1 afresh, and the state keeps one encoding of constant size."""
    frames = make_frames(4, 16, 24, seed=30)
    flows, states = [], [tiny_engine.new_session(seed=2)]
    handle = tiny_engine.flow.register_forward_hook(lambda m, args, out: flows.append(out[0]))
    try:
        for frame in frames:
            [result] = tiny_engine.step([FrameRequest(states[-1], frame)])
            states.append(result.state)
    finally:
        handle.remove()
    assert len(flows) == len(frames) - 1  # the first frame has no flow
    lr = [state.prev_lr for state in states[1:]]
    with torch.inference_mode():
        for n, flow in enumerate(flows, start=1):
            assert torch.equal(flow, tiny_engine.flow.between(lr[n], lr[n - 1]))
            assert torch.equal(states[n].flow_features, tiny_engine.flow.encode(lr[n - 1]))
    sizes = {state.nbytes() for state in states[1:]}
    assert len(sizes) == 1
