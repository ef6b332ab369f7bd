"""Per-stream state of the causal engine: everything a stream carries from one frame to the next."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SessionState:
    """What one stream remembers between frames. Engines take it and return an updated copy.

    ``prev_hr`` is the previous decoded output, unclamped, in [-1, 1] (1, 3, 4H, 4W) and ``prev_lr``
    the previous input frame in [-1, 1] (1, 3, H, W); both are ``None`` before the first frame.
    ``flow_features`` is the previous frame's encoding by the flow network (engines with a flow),
    kept so that each frame is encoded once.
    ``generator`` draws this stream's initial noise, so streams are reproducible and independent.
    """

    seed: int
    generator: torch.Generator = field(repr=False)
    frame_index: int = 0
    prev_hr: torch.Tensor | None = field(default=None, repr=False)
    prev_lr: torch.Tensor | None = field(default=None, repr=False)
    flow_features: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def new(cls, seed: int | None = None) -> SessionState:
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        # Noise is drawn on the CPU: the same seed gives the same frames on every device.
        return cls(seed=seed, generator=torch.Generator("cpu").manual_seed(seed))

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of the frames this stream's temporal chain was built on."""
        return None if self.prev_lr is None else tuple(self.prev_lr.shape[-2:])

    def continues_with(self, height: int, width: int) -> bool:
        """Whether a frame of this size continues the chain (else the chain restarts at frame 0)."""
        return self.prev_hr is not None and self.input_size == (height, width)

    def restarted(self) -> SessionState:
        """The state at frame 0 of a new chain (same stream, same noise generator)."""
        return SessionState(seed=self.seed, generator=self.generator)

    def advanced(
        self, lr: torch.Tensor, hr: torch.Tensor, flow_features: torch.Tensor | None = None
    ) -> SessionState:
        """The state after a frame: its input ``lr`` (1, 3, H, W), output ``hr`` and flow
        encoding, copied so that the state does not pin the whole batch they were sliced from."""
        return SessionState(
            seed=self.seed,
            generator=self.generator,
            frame_index=self.frame_index + 1,
            prev_hr=hr.clone(),
            prev_lr=lr.clone(),
            flow_features=None if flow_features is None else flow_features.clone(),
        )

    def nbytes(self) -> int:
        """Bytes of tensors this state holds (constant over a stream's life)."""
        tensors = [t for t in (self.prev_hr, self.prev_lr, self.flow_features) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)
