"""Reading weight files (safetensors or torch pickles restricted to tensors)."""

from __future__ import annotations

from pathlib import Path

import torch


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
