"""The temporal tiny autoencoder ("TPM" decoder) of Stream-DiffVSR.

A TAESD-style autoencoder whose residual blocks can fuse features of the previous frame. Unlike the
reference implementation, the previous frame's features are *arguments* of ``forward``; no module
keeps per-stream state, so one instance serves any number of streams.

The parameter layout (``encoder.layers.N``, ``decoder.layers.N``, ``conv.{0,2,4}``, ``alpha``,
``temporal_processor.{0,2}``) matches the official ``vae/diffusion_pytorch_model.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

# Strength with which the temporal processor's output is added to a block's features.
TEMPORAL_MIX = 0.1
# Spatial pooling before the temporal processor (fixed in the trained model).
TEMPORAL_POOL = 4


class TemporalBlock(nn.Module):
    """Residual conv block; with ``prev`` given, it mixes in the previous frame's features."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            get_activation(act_fn),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            get_activation(act_fn),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.fuse = nn.ReLU()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.temporal_processor = nn.Sequential(
            nn.Conv1d(out_channels, out_channels, 3, padding=1),
            get_activation(act_fn),
            nn.Conv1d(out_channels, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        features = self.conv(x)
        if prev is not None:
            features = features + TEMPORAL_MIX * self._temporal(features, prev)
        return self.fuse(features + self.skip(x))

    def _temporal(self, current: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = current.shape
        cur = F.avg_pool2d(current, TEMPORAL_POOL)
        pooled_hw = cur.shape[-2:]
        pre = F.avg_pool2d(prev, TEMPORAL_POOL)
        length = cur.shape[-2] * cur.shape[-1]
        # Current and previous positions form one sequence of length 2P for the 1-D convs.
        sequence = torch.cat([cur.flatten(2), pre.flatten(2)], dim=2)
        out = self.temporal_processor(sequence)
        mixed = self.alpha * out[:, :, :length] + (1 - self.alpha) * out[:, :, -length:]
        mixed = mixed.view(batch, channels, *pooled_hw)
        return F.interpolate(mixed, size=(height, width), mode="bilinear", align_corners=False)


class TinyEncoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: Sequence[int],
        block_out_channels: Sequence[int],
        act_fn: str,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (count, channels) in enumerate(zip(num_blocks, block_out_channels)):
            if i == 0:
                layers.append(nn.Conv2d(in_channels, channels, kernel_size=3, padding=1))
            else:
                layers.append(nn.Conv2d(channels, channels, 3, padding=1, stride=2, bias=False))
            layers.extend(TemporalBlock(channels, channels, act_fn) for _ in range(count))
        layers.append(nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Encode an image in [-1, 1] to latents (TAESD convention: the net sees [0, 1])."""
        x = image.add(1).div(2)
        for layer in self.layers:
            x = layer(x)
        return x

    def temporal_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every block, deepest first, ready for the decoder's blocks.

        As in training, the image goes in as it is (no [-1, 1] -> [0, 1] shift) and the final
        conv is not needed.
        """
        features = []
        x = image
        for layer in self.layers[:-1]:
            x = layer(x)
            if isinstance(layer, TemporalBlock):
                features.append(x)
        return features[::-1]


class TemporalDecoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: Sequence[int],
        block_out_channels: Sequence[int],
        upsampling_scaling_factor: int,
        act_fn: str,
        upsample_fn: str,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1),
            get_activation(act_fn),
        ]
        for i, (count, channels) in enumerate(zip(num_blocks, block_out_channels)):
            last = i == len(num_blocks) - 1
            layers.extend(TemporalBlock(channels, channels, act_fn) for _ in range(count))
            if not last:
                layers.append(nn.Upsample(scale_factor=upsampling_scaling_factor, mode=upsample_fn))
            conv_out = out_channels if last else channels
            layers.append(nn.Conv2d(channels, conv_out, kernel_size=3, padding=1, bias=last))
        self.layers = nn.ModuleList(layers)

    @property
    def num_temporal_blocks(self) -> int:
        return sum(isinstance(layer, TemporalBlock) for layer in self.layers)

    def forward(
        self, latents: torch.Tensor, features: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Decode latents to an image in [-1, 1] (not clamped).

        ``features`` are the previous frame's encoder features (``TinyEncoder.temporal_features``),
        one per temporal block in order; ``None`` decodes without temporal guidance (frame 0).
        """
        if features is not None and len(features) != self.num_temporal_blocks:
            raise ValueError(
                f"expected {self.num_temporal_blocks} temporal feature maps, got {len(features)}"
            )
        x = torch.tanh(latents / 3) * 3  # soft clamp
        block = 0
        for layer in self.layers:
            if isinstance(layer, TemporalBlock):
                x = layer(x, None if features is None else features[block])
                block += 1
            else:
                x = layer(x)
        return x.mul(2).sub(1)


class TemporalAutoencoderTiny(ModelMixin, ConfigMixin):
    """Encoder + temporal decoder, configured by the checkpoint's ``vae/config.json``."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (64, 64, 64),
        decoder_block_out_channels: tuple[int, ...] = (64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: tuple[int, ...] = (1, 3, 3),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 1),
        latent_magnitude: int = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        super().__init__()
        if len(encoder_block_out_channels) != len(num_encoder_blocks):
            raise ValueError("encoder_block_out_channels and num_encoder_blocks differ in length")
        if len(decoder_block_out_channels) != len(num_decoder_blocks):
            raise ValueError("decoder_block_out_channels and num_decoder_blocks differ in length")
        self.encoder = TinyEncoder(
            in_channels, latent_channels, num_encoder_blocks, encoder_block_out_channels, act_fn
        )
        self.decoder = TemporalDecoder(
            latent_channels,
            out_channels,
            num_decoder_blocks,
            decoder_block_out_channels,
            upsampling_scaling_factor,
            act_fn,
            upsample_fn,
        )

    @property
    def spatial_scale(self) -> int:
        """How much larger the decoded image is than the latent (4 for Stream-DiffVSR)."""
        stages = len(self.config.decoder_block_out_channels)
        return self.config.upsampling_scaling_factor ** (stages - 1)

    def decode(
        self, latents: torch.Tensor, features: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.decoder(latents / self.config.scaling_factor, features)
