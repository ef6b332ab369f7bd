"""DDIMSampler (pure-function DDIM, eta 0) against diffusers' DDIMScheduler, official config."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from streamvsr.engine.architecture import SCHEDULER_CONFIG
from streamvsr.engine.sampler import DDIMSampler


def official_scheduler(**changes) -> DDIMScheduler:
    return DDIMScheduler.from_config({**SCHEDULER_CONFIG, **changes})


def test_official_schedule_four_steps():
    sampler = DDIMSampler.from_scheduler(official_scheduler(), 4)
    assert len(sampler) == 4
    assert sampler.timesteps == (999, 749, 499, 249)
    assert sampler.prediction_type == "v_prediction"
    assert sampler.init_noise_sigma == 1.0
    # set_alpha_to_one is false: the last step lands on alpha_bar_0 = 1 - beta_0 = 0.9999.
    assert sampler.alphas_prev[-1] == pytest.approx(0.9999, abs=1e-6)
    # Each step lands on the next step's timestep.
    assert sampler.alphas_prev[:-1] == sampler.alphas[1:]
    reference = official_scheduler()
    for t, alpha in zip(sampler.timesteps, sampler.alphas, strict=True):
        assert alpha == pytest.approx(float(reference.alphas_cumprod[t]), rel=1e-6)


def test_from_scheduler_rejects_zero_steps():
    with pytest.raises(ValueError):
        DDIMSampler.from_scheduler(official_scheduler(), 0)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
@pytest.mark.parametrize("steps", [4, 2, 1])
def test_matches_diffusers_ddim(prediction_type, steps):
    sampler = DDIMSampler.from_scheduler(official_scheduler(prediction_type=prediction_type), steps)
    reference = official_scheduler(prediction_type=prediction_type)
    reference.set_timesteps(steps)
    assert tuple(int(t) for t in reference.timesteps) == sampler.timesteps

    generator = torch.Generator().manual_seed(steps)
    ours = theirs = torch.randn(2, 4, 6, 10, generator=generator)
    for index, timestep in enumerate(reference.timesteps):
        # A model output that depends on the sample, as a network's would.
        model_output = 0.5 * torch.randn(ours.shape, generator=generator) + 0.3 * ours
        expected = reference.step(model_output, timestep, theirs, eta=0.0).prev_sample
        got = sampler.step(index, model_output, ours)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        ours, theirs = got, expected


def test_step_is_pure():
    """The sampler holds no per-call state: a step gives the same result whatever ran before."""
    sampler = DDIMSampler.from_scheduler(official_scheduler(), 4)
    sample, output = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    first = sampler.step(2, output, sample)
    sampler.step(0, torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4))
    sampler.step(3, torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4))
    torch.testing.assert_close(sampler.step(2, output, sample), first, rtol=0, atol=0)
