"""What the request handlers share once the engine is up: sessions, the GPU worker, settings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from aiortc import RTCConfiguration

from streamvsr.config import ServerSettings
from streamvsr.engines import EngineChoice

from .encoders import Encoders
from .metrics import Metrics
from .scheduler import FrameScheduler
from .sessions import SessionRegistry
from .tracks import InputLimits


@dataclass
class Runtime:
    settings: ServerSettings
    choice: EngineChoice
    metrics: Metrics
    scheduler: FrameScheduler
    registry: SessionRegistry
    rtc_config: RTCConfiguration
    encoders: Encoders  # the stream encoders' (whose viewers share them)
    base_seed: int | None = 0
    _seeds: itertools.count = field(default_factory=itertools.count)

    @property
    def input_limits(self) -> InputLimits:
        scale = self.choice.engine.scale
        return InputLimits(
            self.settings.max_input_width,
            self.settings.max_input_height,
            self.settings.max_output_pixels // (scale * scale),
        )

    def next_seed(self) -> int | None:
        """Seeds for sessions in order of arrival (None: random)."""
        n = next(self._seeds)
        return None if self.base_seed is None else self.base_seed + n
