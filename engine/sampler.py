"""Deterministic DDIM sampling (eta = 0) with coefficients precomputed from the scheduler config.

diffusers' ``DDIMScheduler`` is stateful (``set_timesteps`` mutates it), which does not fit one
model serving many streams. ``DDIMSampler`` reads the same config, precomputes each step's
coefficients once, and its ``step`` is a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler


@dataclass(frozen=True)
class DDIMSampler:
    timesteps: tuple[int, ...]
    alphas: tuple[float, ...]  # cumulative alpha at each step's timestep
    alphas_prev: tuple[float, ...]  # cumulative alpha of the timestep each step lands on
    prediction_type: str
    init_noise_sigma: float = 1.0

    @classmethod
    def from_scheduler(cls, scheduler: DDIMScheduler, steps: int) -> DDIMSampler:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        config = scheduler.config
        scheduler.set_timesteps(steps)
        timesteps = [int(t) for t in scheduler.timesteps]
        stride = config.num_train_timesteps // steps
        cumprod = scheduler.alphas_cumprod
        final = float(scheduler.final_alpha_cumprod)
        prev = [float(cumprod[t - stride]) if t - stride >= 0 else final for t in timesteps]
        return cls(
            timesteps=tuple(timesteps),
            alphas=tuple(float(cumprod[t]) for t in timesteps),
            alphas_prev=tuple(prev),
            prediction_type=config.prediction_type,
            init_noise_sigma=float(scheduler.init_noise_sigma),
        )

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, index: int, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Sample at the next (less noisy) timestep from the model's output at step ``index``."""
        a, a_prev = self.alphas[index], self.alphas_prev[index]
        sa, sb = a**0.5, (1 - a) ** 0.5
        if self.prediction_type == "v_prediction":
            x0 = sa * sample - sb * model_output
            eps = sa * model_output + sb * sample
        elif self.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - sb * eps) / sa
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - sa * x0) / sb
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
