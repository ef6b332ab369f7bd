"""Stream-DiffVSR as a causal, batched, per-frame engine.

One ``StreamDiffVSR`` holds the weights; streams are ``SessionState`` objects passed in and
returned.
``step`` advances any number of streams by one frame; same-size frames share one batch. For each
frame (see docs: the per-frame algorithm):

1. flow from this LR frame to the previous one (RAFT), warp the previous HR output with it;
2. encode the warped image into temporal features (VAE encoder blocks);
3. denoise a fresh latent at LR size in ``steps`` DDIM steps with the UNet, which the ControlNet
   (ARTG) steers with the warped image;
4. decode with the temporal decoder (TPM) fed the features of step 2.

A stream's first frame (or the first after a size change) skips 1, 2 and the ControlNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from .base import FrameRequest, FrameResult, step_by_size, to_model_input, to_uint8_frames
from .flow import FlowEstimator, flow_warp
from .sampler import DDIMSampler
from .state import SessionState
from .tiling import decode_tiled
from .timing import NO_TIMER, StageTimer
from .vae import TemporalAutoencoderTiny


@dataclass
class _Guidance:
    """What the previous frames contribute to the continuing streams of a batch."""

    rows: list[int]  # batch rows that continue a chain
    condition: torch.Tensor  # warped previous output, (len(rows), 3, 4H, 4W)
    features: list[torch.Tensor]  # decoder temporal features for those rows


class StreamDiffVSR:
    name = "stream-diffvsr"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        vae: TemporalAutoencoderTiny,
        sampler: DDIMSampler,
        prompt_embeds: torch.Tensor,
        flow: FlowEstimator,
        model_id: str = "",
        vae_tile: int = 0,
    ):
        self.unet = unet
        self.controlnet = controlnet
        self.vae = vae
        self.sampler = sampler
        self.flow = flow
        self.model_id = model_id
        self.vae_tile = vae_tile  # latent tile size for tiled decoding; 0 = whole frames
        self.device = unet.device
        self.dtype = unet.dtype
        self.scale = vae.spatial_scale
        self.prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        self.latent_channels = vae.config.latent_channels
        self._timesteps = [torch.tensor(t, device=self.device) for t in sampler.timesteps]

    @property
    def steps(self) -> int:
        return len(self.sampler)

    def new_session(self, seed: int | None = None) -> SessionState:
        return SessionState.new(seed)

    @torch.inference_mode()
    def step(
        self, requests: Sequence[FrameRequest], timer: StageTimer | None = None
    ) -> list[FrameResult]:
        timer = timer or NO_TIMER
        return step_by_size(requests, lambda group: self._step_group(group, timer))

    def _step_group(self, requests: list[FrameRequest], timer) -> list[FrameResult]:
        with timer.stage("upload"):
            lr = to_model_input([r.frame for r in requests], self.device, self.dtype)
        height, width = lr.shape[-2:]
        states = [self._restart_if_resized(r.state, height, width) for r in requests]
        guidance = self._guidance(states, lr, timer)
        latents = self._initial_latents(requests, states, height, width)
        latents = self._denoise(latents, lr, guidance, timer)
        with timer.stage("vae_decode"):
            hr = self._decode(latents, guidance)
        with timer.stage("download"):
            frames = to_uint8_frames(hr)
        return [
            FrameResult(self._advance(state, lr[i : i + 1], hr[i : i + 1]), frames[i])
            for i, state in enumerate(states)
        ]

    @staticmethod
    def _restart_if_resized(state: SessionState, height: int, width: int) -> SessionState:
        if state.prev_hr is None or state.continues_with(height, width):
            return state
        return SessionState(seed=state.seed, generator=state.generator)

    @staticmethod
    def _advance(state: SessionState, lr: torch.Tensor, hr: torch.Tensor) -> SessionState:
        return SessionState(
            seed=state.seed,
            generator=state.generator,
            frame_index=state.frame_index + 1,
            prev_hr=hr.clone(),  # a copy, so the state does not pin the whole batch
            prev_lr=lr.clone(),
        )

    def _guidance(self, states: list[SessionState], lr: torch.Tensor, timer) -> _Guidance | None:
        rows = [i for i, s in enumerate(states) if s.prev_hr is not None]
        if not rows:
            return None
        prev_lr = torch.cat([states[i].prev_lr for i in rows])
        prev_hr = torch.cat([states[i].prev_hr for i in rows])
        with timer.stage("flow"):
            flow = self.flow(lr[rows], prev_lr)
        with timer.stage("warp"):
            warped = flow_warp(prev_hr.float(), flow).to(self.dtype)
        with timer.stage("vae_encode"):
            features = self.vae.encoder.temporal_features(warped)
        return _Guidance(rows, warped, features)

    def _initial_latents(
        self, requests: list[FrameRequest], states: list[SessionState], height: int, width: int
    ) -> torch.Tensor:
        shape = (1, self.latent_channels, height, width)
        noises = []
        for request, state in zip(requests, states):
            noise = request.noise
            if noise is None:
                noise = torch.randn(shape, generator=state.generator)
            elif tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
            noises.append(noise)
        latents = torch.cat(noises).to(self.device, torch.float32, non_blocking=True)
        return latents * self.sampler.init_noise_sigma

    def _denoise(
        self, latents: torch.Tensor, lr: torch.Tensor, guidance: _Guidance | None, timer
    ) -> torch.Tensor:
        batch = latents.shape[0]
        prompt = self.prompt_embeds.expand(batch, -1, -1)
        for index, timestep in enumerate(self._timesteps):
            model_input = torch.cat([latents.to(self.dtype), lr], dim=1)
            residuals = {}
            if guidance is not None:
                with timer.stage("controlnet"):
                    residuals = self._control_residuals(model_input, timestep, prompt, guidance)
            with timer.stage("unet"):
                prediction = self.unet(
                    model_input,
                    timestep,
                    encoder_hidden_states=prompt,
                    return_dict=False,
                    **residuals,
                )[0]
            with timer.stage("scheduler"):
                latents = self.sampler.step(index, prediction.float(), latents)
        return latents

    def _control_residuals(
        self, model_input: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor, guidance
    ) -> dict[str, object]:
        rows = guidance.rows
        down, mid = self.controlnet(
            model_input[rows],
            timestep,
            encoder_hidden_states=prompt[rows],
            controlnet_cond=guidance.condition,
            conditioning_scale=1.0,
            return_dict=False,
        )
        batch = model_input.shape[0]
        if len(rows) < batch:
            # First frames get zero residuals: adding zeros is exactly "no ControlNet".
            down = [_scatter_rows(d, rows, batch) for d in down]
            mid = _scatter_rows(mid, rows, batch)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _decode(self, latents: torch.Tensor, guidance: _Guidance | None) -> torch.Tensor:
        latents = latents.to(self.dtype)
        if guidance is None:
            return self._vae_decode(latents, None)
        if len(guidance.rows) == latents.shape[0]:
            return self._vae_decode(latents, guidance.features)
        # A mixed batch: first frames decode without temporal features, the rest with them.
        first = [i for i in range(latents.shape[0]) if i not in guidance.rows]
        out_first = self._vae_decode(latents[first], None)
        out_rest = self._vae_decode(latents[guidance.rows], guidance.features)
        out = out_first.new_empty((latents.shape[0], *out_first.shape[1:]))
        out[first] = out_first
        out[guidance.rows] = out_rest
        return out

    def _vae_decode(self, latents: torch.Tensor, features) -> torch.Tensor:
        if self.vae_tile and max(latents.shape[-2:]) > self.vae_tile:
            overlap = max(1, self.vae_tile // 4)
            return decode_tiled(self.vae, latents, features, self.vae_tile, overlap)
        return self.vae.decode(latents, features)


def _scatter_rows(values: torch.Tensor, rows: list[int], batch: int) -> torch.Tensor:
    full = values.new_zeros((batch, *values.shape[1:]))
    full[rows] = values
    return full
