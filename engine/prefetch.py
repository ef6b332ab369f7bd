"""Work started ahead on a side CUDA stream, to overlap with the step the main stream is running.

The flow of a stream's next frame needs only its LR frames (the next and the current one), not the
current step's output, so it can run while the current frame is being denoised: ``StreamDiffVSR
.prefetch_flow`` starts it here and the next step picks it up from ``FrameRequest.flow``.
Elsewhere than on CUDA the work simply runs at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


class SideStream:
    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run the block's GPU work on the side stream. It does not wait for the main stream:
        that is the point, so the block must only use tensors it makes itself (or weights)."""
        if self.stream is None:
            yield
        else:
            with torch.cuda.stream(self.stream):
                yield

    def mark_done(self) -> torch.cuda.Event | None:
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


@dataclass
class PrefetchedFlow:
    """Flow from a stream's previous LR frame to its next one, (1, 2, 4H, 4W), computed ahead,
    with the next frame's encoding by the flow network (for the flow after it)."""

    flow: torch.Tensor
    features: torch.Tensor
    done: torch.cuda.Event | None = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow, features), usable on the current stream (which waits for the side stream)."""
        if self.done is not None:
            current = torch.cuda.current_stream(self.flow.device)
            current.wait_event(self.done)
            for tensor in (self.flow, self.features):
                tensor.record_stream(current)  # its memory stays reserved until this use is done
        return self.flow, self.features
