"""The reference implementation's loop, written plainly, on the engine's own weights.

Like the original ``StreamDiffVSRPipeline.__call__``: every frame's bicubic x4 image, every flow
(RAFT at HR) and every initial latent are built before frame 0 is denoised, and diffusers'
stateful ``DDIMScheduler`` drives the steps. Memory grows with the sequence: this is the baseline
the streaming engine is measured against, and an independent check of its results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from streamvsr.engine.flow import flow_warp
from streamvsr.engine.stream_diffvsr import StreamDiffVSR


class Upscaled(NamedTuple):
    frames: list[np.ndarray]  # uint8 (4H, 4W, 3)
    stage_frames: dict[str, int]  # how many frames each timed stage ran on


@torch.inference_mode()
def upscale_sequence(
    engine: StreamDiffVSR,
    scheduler: DDIMScheduler,
    frames: Sequence[np.ndarray],
    seed: int,
    timer=None,
) -> Upscaled:
    """Upscale a whole sequence at once: the frames, and how many frames each stage ran on (the
    flow and the ControlNet skip the first frame, which has no previous one)."""
    device, dtype = engine.device, engine.dtype
    images = [
        torch.from_numpy(f).permute(2, 0, 1)[None].to(device, torch.float32) / 127.5 - 1
        for f in frames
    ]
    upscaled = [
        F.interpolate(i, scale_factor=4, mode="bicubic", align_corners=False) for i in images
    ]
    with _stage(timer, "flow"):
        flows = [engine.flow.raft(upscaled[n], upscaled[n - 1])[-1] for n in range(1, len(frames))]
    ran = Counter(flow=len(flows))
    generator = torch.Generator("cpu").manual_seed(seed)
    height, width = images[0].shape[-2:]
    latents = [torch.randn((1, 4, height, width), generator=generator) for _ in frames]
    scheduler.set_timesteps(engine.steps)
    outputs, previous = [], None
    for n, image in enumerate(images):
        lr = image.to(dtype)
        latent = latents[n].to(device) * scheduler.init_noise_sigma
        features, warped = None, None
        if n > 0:
            warped = flow_warp(previous.float(), flows[n - 1]).to(dtype)
            features = engine.vae.encoder.temporal_features(warped)
            ran["controlnet"] += 1  # guides every denoising step of this frame
        for t in scheduler.timesteps:
            model_input = torch.cat([latent.to(dtype), lr], dim=1)
            residuals = {}
            if warped is not None:
                with _stage(timer, "controlnet"):
                    down, mid = engine.controlnet(
                        model_input,
                        t,
                        encoder_hidden_states=engine.prompt_embeds,
                        controlnet_cond=warped,
                        conditioning_scale=1.0,
                        return_dict=False,
                    )
                residuals = {
                    "down_block_additional_residuals": down,
                    "mid_block_additional_residual": mid,
                }
            with _stage(timer, "unet"):
                v = engine.unet(
                    model_input,
                    t,
                    encoder_hidden_states=engine.prompt_embeds,
                    return_dict=False,
                    **residuals,
                )[0]
            latent = scheduler.step(v.float(), t, latent).prev_sample
        ran.update(["unet", "vae_decode"])
        with _stage(timer, "vae_decode"):
            previous = engine.vae.decode(latent.to(dtype), features)
        pixels = ((previous.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        outputs.append(pixels[0].permute(1, 2, 0).cpu().numpy())
    return Upscaled(outputs, dict(ran))


def _stage(timer, name: str):
    from streamvsr.engine.timing import NO_TIMER

    return (timer or NO_TIMER).stage(name)
