"""torchvision's RAFT, run the way a stream needs it: no host syncs, each frame encoded once.

``torchvision.models.optical_flow.RAFT.forward`` suits one pair of images, not a stream:

- it builds its pixel grids on the CPU and copies them to the device (two copies per call and one
  per refinement update: 14 blocking copies, i.e. GPU stalls, per 12-update call);
- it encodes both images, although the second one (the previous frame) was the first one of the
  previous call; the encoder's InstanceNorm is per sample, so that encoding can be kept and reused
  exactly;
- it upsamples the flow after every update, though only the last one is used;
- its correlation block keeps the correlation pyramid as a module attribute between calls.

``StreamRaft`` runs the same submodules (same weights, same arithmetic) as pure functions:
``encode(image)`` once per frame, then ``stream_raft(image, features, previous_features)`` per
pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.optical_flow._utils import grid_sample, make_coords_grid, upsample_flow
from torchvision.models.optical_flow.raft import RAFT

# RAFT's feature maps are 1/8 of its input.
RAFT_STRIDE = 8


class StreamRaft(nn.Module):
    """torchvision's ``RAFT`` split into per-frame encoding and per-pair flow; weights only."""

    def __init__(self, raft: RAFT, num_updates: int = 12):
        super().__init__()
        self.raft = raft
        self.num_updates = num_updates
        # Correlations are divided by sqrt(C), C the encoding's channels, rounded to float32 as
        # torchvision computes it (a Python float here: no tensor to make or read per call).
        channels = raft.feature_encoder.conv.out_channels
        self.correlation_scale = float(torch.tensor(float(channels)).sqrt())

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Feature encoding of images (B, 3, H, W) (H, W multiples of 8): (B, C, H/8, W/8)."""
        return self.raft.feature_encoder(image)

    def forward(
        self, image: torch.Tensor, features: torch.Tensor, previous_features: torch.Tensor
    ) -> torch.Tensor:
        """Flow (B, 2, H, W) from ``image`` (encoded as ``features``) to the image encoded as
        ``previous_features``: torchvision's last flow prediction."""
        raft = self.raft
        pyramid = correlation_pyramid(
            features, previous_features, raft.corr_block.num_levels, self.correlation_scale
        )
        context_out = raft.context_encoder(image)
        hidden_size = raft.update_block.hidden_state_size
        hidden, context = context_out.split(
            [hidden_size, context_out.shape[1] - hidden_size], dim=1
        )
        hidden, context = torch.tanh(hidden), F.relu(context)
        batch, _, height, width = features.shape
        coords0 = make_coords_grid(batch, height, width, device=features.device)
        coords1 = coords0.clone()
        offsets = _neighbourhood(raft.corr_block.radius, features.device)
        for _ in range(self.num_updates):
            correlation = index_pyramid(pyramid, coords1, offsets)
            hidden, delta = raft.update_block(hidden, context, correlation, coords1 - coords0)
            coords1 = coords1 + delta
        mask = None if raft.mask_predictor is None else raft.mask_predictor(hidden)
        return upsample_flow(coords1 - coords0, up_mask=mask)


def correlation_pyramid(
    features: torch.Tensor, previous_features: torch.Tensor, levels: int, scale: float
) -> list[torch.Tensor]:
    """All-pairs correlation of two feature maps (B, C, h, w) divided by ``scale``, pooled
    ``levels`` times over the second map's pixels: (B*h*w, 1, h/2^k, w/2^k) for k < levels
    (torchvision's ``CorrBlock``)."""
    batch, channels, height, width = features.shape
    first = features.view(batch, channels, height * width)
    second = previous_features.view(batch, channels, height * width)
    volume = torch.matmul(first.transpose(1, 2), second)
    volume = volume.view(batch * height * width, 1, height, width) / scale
    pyramid = [volume]
    for _ in range(levels - 1):
        volume = F.avg_pool2d(volume, kernel_size=2, stride=2)
        pyramid.append(volume)
    return pyramid


def index_pyramid(
    pyramid: list[torch.Tensor], coords: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Correlation features around each pixel's current match ``coords`` (B, 2, h, w): the
    (2r+1)^2 neighbourhood at every pyramid level, (B, levels*(2r+1)^2, h, w)."""
    batch, _, height, width = coords.shape
    centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
    levels = []
    for volume in pyramid:
        sampled = grid_sample(volume, centres + offsets, align_corners=True, mode="bilinear")
        levels.append(sampled.view(batch, height, width, -1))
        centres = centres / 2
    return torch.cat(levels, dim=-1).permute(0, 3, 1, 2).contiguous()


def _neighbourhood(radius: int, device: torch.device) -> torch.Tensor:
    """(1, 2r+1, 2r+1, 2) offsets -r..r, made on the device (no host copy)."""
    side = 2 * radius + 1
    steps = torch.linspace(-radius, radius, side, device=device)
    return torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).view(1, side, side, 2)
