"""Stream-DiffVSR as a causal, batched, per-frame engine.

One ``StreamDiffVSR`` holds the weights; streams are ``SessionState`` objects passed in and
returned.
``step`` advances any number of streams by one frame; same-size frames share one batch. For each
frame (the reference implementation's per-frame algorithm):

1. flow from this LR frame to the previous one (RAFT), warp the previous HR output with it;
2. encode the warped image into temporal features (VAE encoder blocks);
3. denoise a fresh latent at LR size in ``steps`` DDIM steps with the UNet, which the ControlNet
   (ARTG) steers with the warped image;
4. decode with the temporal decoder (TPM) fed the features of step 2.

A stream's first frame (or the first after a size change) skips 1, 2 and the ControlNet. A batch
holds either first frames only or continuing frames only (a mixed set runs as two batches), so every
batch has one fixed computation graph: what ``torch.compile`` and CUDA graphs need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .acceleration import Acceleration, CompiledCall
from .base import (
    Download,
    FrameRequest,
    FrameResult,
    LaunchedFrame,
    PendingStep,
    PixelFormat,
    step_grouped,
    to_model_input,
)
from .flow import FlowEstimator, flow_warp
from .networks import NoisePredictor
from .prefetch import PrefetchedFlow, SideStream
from .sampler import DDIMSampler
from .state import SessionState
from .tiling import decode_tiled
from .timing import NO_TIMER, StageTimer
from .vae import TemporalAutoencoderTiny, TinyEncoder

log = logging.getLogger(__name__)


class GuideEncoder(nn.Module):
    """The previous output warped onto the current frame, as the ControlNet's embedded condition
    and the temporal decoder's features. Holds weights only."""

    def __init__(self, predictor: NoisePredictor, encoder: TinyEncoder):
        super().__init__()
        self.predictor = predictor
        self.encoder = encoder

    def forward(
        self, prev_hr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        warped = flow_warp(prev_hr.float(), flow).to(prev_hr.dtype)
        return self.predictor.embed_condition(warped), self.encoder.temporal_features(warped)


@dataclass(frozen=True)
class _Networks:
    """The four network calls of a frame: eager modules, or their compiled versions."""

    flow: Callable  # (lr, previous frames' flow encoding) -> (flow at HR size, lr's encoding)
    guide: Callable  # (prev_hr, flow) -> (ControlNet condition, decoder features)
    predict: Callable  # (sample, timestep, prompt, condition | None) -> noise prediction
    decode: Callable  # (latents, features | None) -> image

    def compiled(self, acceleration: Acceleration) -> _Networks:
        return _Networks(
            CompiledCall(self.flow, acceleration),
            CompiledCall(self.guide, acceleration),
            CompiledCall(self.predict, acceleration),
            CompiledCall(self.decode, acceleration),
        )


@dataclass
class _Guidance:
    """What the previous frames contribute to a batch of continuing streams."""

    condition: torch.Tensor  # ControlNet embedding of the warped previous outputs
    features: list[torch.Tensor]  # decoder temporal features
    flow_features: torch.Tensor  # the frames' flow encoding, for the next frames' flow


BatchShape = tuple[int, int, int]  # (batch size, height, width)


class StreamDiffVSR:
    name = "stream-diffvsr"

    def __init__(
        self,
        unet: nn.Module,
        controlnet: nn.Module,
        vae: TemporalAutoencoderTiny,
        sampler: DDIMSampler,
        prompt_embeds: torch.Tensor,
        flow: FlowEstimator,
        model_id: str = "",
        vae_tile: int = 0,
        acceleration: Acceleration | None = None,
    ):
        self.unet = unet
        self.controlnet = controlnet
        self.vae = vae
        self.sampler = sampler
        self.flow = flow
        self.model_id = model_id
        self.vae_tile = vae_tile  # latent tile size for tiled decoding; 0 = whole frames
        self.acceleration = acceleration or Acceleration()
        self.device = unet.device
        self.dtype = unet.dtype
        self.scale = vae.spatial_scale
        self.prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        self.latent_channels = vae.config.latent_channels
        self._timesteps = [torch.tensor(t, device=self.device) for t in sampler.timesteps]
        predictor = NoisePredictor(unet, controlnet)
        self._eager = _Networks(flow, GuideEncoder(predictor, vae.encoder), predictor, vae.decoder)
        self._compiled = None
        if self.acceleration.options.compile != "off":
            self._compiled = self._eager.compiled(self.acceleration)
        self._side_stream = SideStream(self.device)
        self._warm: set[BatchShape] = set()  # shapes the compiled networks are ready for
        self._cold: set[BatchShape] = set()  # shapes already logged as running eager

    @property
    def steps(self) -> int:
        return len(self.sampler)

    @property
    def warm_shapes(self) -> frozenset[BatchShape]:
        """(batch size, height, width) of the batches that run compiled."""
        return frozenset(self._warm)

    def new_session(self, seed: int | None = None) -> SessionState:
        return SessionState.new(seed)

    def step(
        self,
        requests: Sequence[FrameRequest],
        timer: StageTimer | None = None,
        pixel_format: PixelFormat = PixelFormat.RGB24,
    ) -> list[FrameResult]:
        return self.launch(requests, timer, pixel_format).results()

    @torch.inference_mode()
    def launch(
        self,
        requests: Sequence[FrameRequest],
        timer: StageTimer | None = None,
        pixel_format: PixelFormat = PixelFormat.RGB24,
    ) -> PendingStep:
        timer = timer or NO_TIMER
        launched = step_grouped(
            requests, _batch_kind, lambda g: self._launch_batch(g, timer, pixel_format=pixel_format)
        )
        return PendingStep(launched)

    @torch.inference_mode()
    def prefetch_flow(self, previous: np.ndarray, frame: np.ndarray) -> PrefetchedFlow | None:
        """Start the flow from ``previous`` to ``frame`` (consecutive LR frames of one stream) on a
        side stream, so that it overlaps the step running now; pass it with ``frame`` as
        ``FrameRequest.flow``. It runs the eager flow network (CUDA graphs stay on one stream)."""
        if tuple(previous.shape) != tuple(frame.shape):
            return None  # a size change restarts the chain: no flow needed
        with self._side_stream.active():
            # The previous frame is encoded again: its encoding from the step running now is not
            # ready yet (and on another stream); this side-stream work is overlapped anyway.
            lr = to_model_input([frame, previous], self.device, self.dtype)
            flow, features = self.flow(lr[:1], self.flow.encode(lr[1:]))
            return PrefetchedFlow(flow, features, self._side_stream.mark_done())

    @torch.inference_mode()
    def warm_up(self, sizes: Iterable[tuple[int, int]], batch_sizes: Iterable[int]) -> None:
        """Compile (and with CUDA graphs record) every (height, width) x batch size, so that
        requests of these shapes never wait for a compiler. Only continuing frames run compiled:
        a stream's first frame (once per stream) runs eager, which halves the graphs to build."""
        if self._compiled is None:
            return
        calls = 3 if self.acceleration.cuda_graphs else 1  # warm-up run, recording, replay
        for height, width in sizes:
            for batch in batch_sizes:
                frame = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
                states = [self.new_session(seed=i) for i in range(batch)]
                for n in range(1 + calls):  # a first frame, then continuing ones
                    requests = [FrameRequest(state, frame) for state in states]
                    networks = self._compiled if n else self._eager
                    launched = self._launch_batch(requests, NO_TIMER, networks)
                    states = [result.state for result in PendingStep(launched).results()]
                self._warm.add((batch, height, width))
                log.info("compiled networks ready for %d x %dx%d", batch, width, height)

    def _networks_for(self, batch: int, height: int, width: int, continuing: bool) -> _Networks:
        if self._compiled is None or not continuing:
            return self._eager
        if (batch, height, width) in self._warm:
            return self._compiled
        if (batch, height, width) not in self._cold:
            self._cold.add((batch, height, width))
            log.info(
                "no compiled networks for %d x %dx%d (not in the warm-up sizes): running eager",
                batch, width, height,
            )  # fmt: skip
        return self._eager

    def _launch_batch(
        self,
        requests: list[FrameRequest],
        timer,
        networks: _Networks | None = None,
        pixel_format: PixelFormat = PixelFormat.RGB24,
    ) -> list[LaunchedFrame]:
        # 1. Upload the LR frames (pinned, asynchronous on CUDA).
        with timer.stage("upload"):
            lr = to_model_input([r.frame for r in requests], self.device, self.dtype)
        height, width = lr.shape[-2:]
        continuing = requests[0].state.continues_with(height, width)
        states = [r.state if continuing else r.state.restarted() for r in requests]
        nets = networks or self._networks_for(len(requests), height, width, continuing)
        with self.acceleration.attention():
            # 2. Guidance from the past: flow, the previous output warped, its condition embedding.
            if continuing:
                guidance = self._guidance(requests, states, lr, nets, timer)
                flow_features = guidance.flow_features
            else:
                guidance = None
                with timer.stage("flow"):
                    flow_features = self.flow.encode(lr)  # for the next frame's flow
            # 3. Denoise the initial latents (ControlNet + UNet, DDIM).
            latents = self._initial_latents(requests, height, width)
            latents = self._denoise(latents, lr, guidance, nets, timer)
            # 4. Decode with the temporal VAE.
            with timer.stage("vae_decode"):
                hr = self._decode(latents, guidance, nets)
        # 5. Start the download (the step's one host synchronisation is ``results()``).
        with timer.stage("download"):
            download = Download(hr, pixel_format)
        return [
            LaunchedFrame(state.advanced(*_row(i, lr, hr, flow_features)), download, i)
            for i, state in enumerate(states)
        ]

    def _guidance(
        self,
        requests: list[FrameRequest],
        states: list[SessionState],
        lr: torch.Tensor,
        nets: _Networks,
        timer,
    ) -> _Guidance:
        prev_hr = torch.cat([state.prev_hr for state in states])
        with timer.stage("flow"):
            if all(r.flow is not None for r in requests):  # started during the previous step
                flows, encodings = zip(*(r.flow.take() for r in requests))
                flow, flow_features = torch.cat(flows), torch.cat(encodings)
            else:
                previous = torch.cat([state.flow_features for state in states])
                flow, flow_features = nets.flow(lr, previous)
        with timer.stage("guide"):
            condition, features = nets.guide(prev_hr, flow)
        return _Guidance(condition, features, flow_features)

    def _initial_latents(
        self, requests: list[FrameRequest], height: int, width: int
    ) -> torch.Tensor:
        shape = (1, self.latent_channels, height, width)
        noises = []
        for request in requests:
            noise = request.noise
            if noise is None:
                noise = torch.randn(shape, generator=request.state.generator)
            elif tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
            noises.append(noise)
        # Gathered straight into pinned memory on CUDA: an asynchronous upload, no host sync.
        batch = torch.empty(
            (len(noises), *shape[1:]), dtype=torch.float32, pin_memory=self.device.type == "cuda"
        )
        noise = torch.cat([n.float() for n in noises], out=batch)
        latents = noise.to(self.device, non_blocking=True)
        return latents * self.sampler.init_noise_sigma

    def _denoise(
        self, latents: torch.Tensor, lr: torch.Tensor, guidance: _Guidance | None, nets, timer
    ) -> torch.Tensor:
        prompt = self.prompt_embeds.expand(latents.shape[0], -1, -1)
        condition = None if guidance is None else guidance.condition
        for index, timestep in enumerate(self._timesteps):
            model_input = torch.cat([latents.to(self.dtype), lr], dim=1)
            with timer.stage("denoise"):
                prediction = nets.predict(model_input, timestep, prompt, condition)
            with timer.stage("scheduler"):
                latents = self.sampler.step(index, prediction.float(), latents)
        return latents

    def _decode(self, latents: torch.Tensor, guidance: _Guidance | None, nets) -> torch.Tensor:
        latents = latents.to(self.dtype)
        features = None if guidance is None else guidance.features
        if self.vae_tile and max(latents.shape[-2:]) > self.vae_tile:
            overlap = max(1, self.vae_tile // 4)
            return decode_tiled(self.vae, latents, features, self.vae_tile, overlap)
        return nets.decode(latents / self.vae.config.scaling_factor, features)


def _row(i: int, *batches: torch.Tensor) -> list[torch.Tensor]:
    return [batch[i : i + 1] for batch in batches]


def _batch_kind(request: FrameRequest) -> tuple[int, int, bool]:
    """Frames share a batch when they have one size and all start or all continue a chain."""
    height, width = request.frame.shape[:2]
    return int(height), int(width), request.state.continues_with(int(height), int(width))
