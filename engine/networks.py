"""The networks of one denoising step, shaped for a per-frame loop and for ``torch.compile``.

diffusers' ``ControlNetModel.forward`` embeds its conditioning image on every call, i.e. at every
denoising step, although the image (the warped previous output, at HR size) is the same for all
steps of a frame. ``NoisePredictor`` splits that out: ``embed_condition`` runs once per frame and
``forward`` (ControlNet residuals + UNet) runs once per step on the embedding. Outside that, the
ControlNet computation is the one of diffusers (checked by ``tests/engine/test_stream_diffvsr.py``).

Only the ControlNet configurations Stream-DiffVSR uses are supported (no class or additional
embeddings, no global pooling); ``check_controlnet_config`` says so at load time.
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from .errors import CheckpointError


def check_controlnet_config(controlnet: ControlNetModel) -> None:
    config = controlnet.config
    unsupported = {
        "class_embed_type": config.class_embed_type,
        "num_class_embeds": config.num_class_embeds,
        "addition_embed_type": config.addition_embed_type,
        "global_pool_conditions": config.global_pool_conditions or None,
    }
    set_keys = [f"{key}={value!r}" for key, value in unsupported.items() if value is not None]
    if set_keys:
        raise CheckpointError(
            f"controlnet config sets {', '.join(set_keys)}, which Stream-DiffVSR does not use"
        )


class NoisePredictor(nn.Module):
    """UNet steered by the ControlNet: one denoising step's noise prediction. Holds weights only."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def embed_condition(self, image: torch.Tensor) -> torch.Tensor:
        """The ControlNet's embedding of its conditioning image: once per frame."""
        if self.controlnet.config.controlnet_conditioning_channel_order == "bgr":
            image = image.flip(1)
        return self.controlnet.controlnet_cond_embedding(image)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        prompt: torch.Tensor,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise prediction for ``sample`` at ``timestep``; ``condition=None`` runs the UNet alone
        (a stream's first frame, which has no previous output to follow)."""
        residuals = {}
        if condition is not None:
            down, mid = self.control_residuals(sample, timestep, prompt, condition)
            residuals = {
                "down_block_additional_residuals": down,
                "mid_block_additional_residual": mid,
            }
        return self.unet(
            sample, timestep, encoder_hidden_states=prompt, return_dict=False, **residuals
        )[0]

    def control_residuals(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        prompt: torch.Tensor,
        condition: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """ControlNet residuals (one per UNet down-block output, and the mid block's) for a
        condition already embedded by ``embed_condition``; conditioning scale 1."""
        net = self.controlnet
        emb = net.time_embedding(net.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype))
        hidden = net.conv_in(sample) + condition
        skips = [hidden]
        for block in net.down_blocks:
            hidden, outputs = block(hidden_states=hidden, temb=emb, **_cross(block, prompt))
            skips.extend(outputs)
        if net.mid_block is not None:
            hidden = net.mid_block(hidden, emb, **_cross(net.mid_block, prompt))
        down = [zero_conv(skip) for skip, zero_conv in zip(skips, net.controlnet_down_blocks)]
        return down, net.controlnet_mid_block(hidden)


def _cross(block: nn.Module, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
    """The prompt argument, for blocks with cross-attention."""
    if getattr(block, "has_cross_attention", False):
        return {"encoder_hidden_states": prompt}
    return {}
