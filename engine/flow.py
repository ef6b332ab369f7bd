"""Optical flow (torchvision RAFT) and the backward warp Stream-DiffVSR was trained with."""

from __future__ import annotations

import enum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.optical_flow import (
    Raft_Large_Weights,
    Raft_Small_Weights,
    raft_large,
    raft_small,
)

from .errors import CheckpointError
from .raft import RAFT_STRIDE, StreamRaft
from .weights import read_state_dict

RAFT_MODELS = {
    "raft_large": (raft_large, Raft_Large_Weights.DEFAULT),
    "raft_small": (raft_small, Raft_Small_Weights.DEFAULT),
}
# RAFT's input sides must be multiples of its stride (8), and its 4-level correlation pyramid
# needs feature maps of at least 16, so inputs of at least 128.
RAFT_MIN_SIDE = 128


class FlowResolution(str, enum.Enum):
    """Where RAFT runs: on the bicubic x4 frames (the reference) or on the LR frames."""

    HR = "hr"
    LR = "lr"


def build_raft(name: str = "raft_large", weights: str | Path | None = None) -> nn.Module:
    """RAFT with torchvision's released weights (from ``TORCH_HOME``) or a state-dict file.

    ``weights="random"`` keeps the random initialisation (tests and speed benchmarks only).
    """
    if name not in RAFT_MODELS:
        raise ValueError(f"unknown flow model {name!r}; choose one of {sorted(RAFT_MODELS)}")
    factory, default_weights = RAFT_MODELS[name]
    if weights == "random":
        model = factory(weights=None)
    elif weights is None:
        try:
            model = factory(weights=default_weights, progress=False)
        except Exception as exc:  # torchvision raises URLError/OSError/RuntimeError here
            raise CheckpointError(
                f"could not load {name} weights ({default_weights}) from the torch cache "
                f"(TORCH_HOME) or download them: {exc}. Run `streamvsr download` on a machine with "
                "internet, or pass a weights file with --flow-weights."
            ) from exc
    else:
        model = factory(weights=None)
        model.load_state_dict(_load_state_dict(Path(weights)))
    return model.eval().requires_grad_(False)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"flow weights file {path} does not exist") from exc
    except Exception as exc:
        raise CheckpointError(f"flow weights file {path} could not be read: {exc}") from exc


def _pad_for_raft(image: torch.Tensor) -> torch.Tensor:
    height, width = image.shape[-2:]
    pad_h = max(RAFT_MIN_SIDE, height + -height % RAFT_STRIDE) - height
    pad_w = max(RAFT_MIN_SIDE, width + -width % RAFT_STRIDE) - width
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    return image


class FlowEstimator(nn.Module):
    """Backward flow from frame n to frame n-1 at HR size, in HR pixels, shape (B, 2, 4H, 4W).

    Inputs are LR frames in [-1, 1]. RAFT runs in float32 whatever the engine's dtype.
    Sides that are not multiples of 8 (or below 128) are edge-padded for RAFT and the flow is
    cropped back.

    A stream encodes each frame for RAFT once: ``forward(lr, previous_features)`` returns the flow
    and ``lr``'s encoding, which the next frame passes back as its ``previous_features``
    (``encode`` starts a chain). ``between(current, previous)`` is the flow of one pair.
    """

    def __init__(
        self,
        raft: nn.Module,
        resolution: FlowResolution | str = FlowResolution.HR,
        scale: int = 4,
        num_updates: int = 12,
    ):
        super().__init__()
        self.stream_raft = StreamRaft(raft, num_updates)
        self.resolution = FlowResolution(resolution)
        self.scale = scale

    @property
    def raft(self) -> nn.Module:
        """torchvision's RAFT, as built (the benchmark's reference loop calls it directly)."""
        return self.stream_raft.raft

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """RAFT's encoding of LR frames (B, 3, H, W), for the flow of the next frame."""
        return self.stream_raft.encode(self._raft_input(lr))

    def forward(
        self, lr: torch.Tensor, previous_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow from ``lr`` to the previous frames, ``lr``'s encoding)."""
        image = self._raft_input(lr)
        features = self.stream_raft.encode(image)
        flow = self.stream_raft(image, features, previous_features)
        return self._to_hr(flow, *lr.shape[-2:]), features

    def between(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Flow from ``current`` to ``previous`` (LR frames, (B, 3, H, W))."""
        return self(current, self.encode(previous))[0]

    def _raft_input(self, lr: torch.Tensor) -> torch.Tensor:
        image = lr.float()
        if self.resolution is FlowResolution.HR:
            image = upscale_bicubic(image, self.scale)
        return _pad_for_raft(image)

    def _to_hr(self, flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """RAFT's (padded) flow cropped to the frame, at HR size in HR pixels."""
        if self.resolution is FlowResolution.HR:
            return flow[..., : height * self.scale, : width * self.scale]
        flow = flow[..., :height, :width]
        flow = F.interpolate(flow, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return flow * self.scale


def upscale_bicubic(image: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """Bicubic xscale, not clamped (as the reference prepares RAFT's input)."""
    return F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)


def flow_warp(image: torch.Tensor, flow: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Backward-warp ``image`` (B, C, H, W) by ``flow`` (B, 2, H, W) in pixels.

    By default this reproduces the convention the weights were trained with: the grid is normalised
    with ``2x/(W-1) - 1`` (an align_corners=True formula) but sampled with ``align_corners=False``,
    which samples pixel ``x*W/(W-1) - 0.5`` instead of ``x``: exact at the centre, up to half a
    pixel off at the borders. ``exact=True`` samples exactly at ``x + flow``.
    """
    _, _, height, width = image.shape
    ys = torch.arange(height, device=image.device, dtype=flow.dtype)
    xs = torch.arange(width, device=image.device, dtype=flow.dtype)
    x = xs.view(1, 1, width) + flow[:, 0]
    y = ys.view(1, height, 1) + flow[:, 1]
    grid = torch.stack(
        (2.0 * x / max(width - 1, 1) - 1.0, 2.0 * y / max(height - 1, 1) - 1.0), dim=3
    )
    return F.grid_sample(
        image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=exact
    )
