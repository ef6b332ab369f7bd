"""Per-stage timing of an engine step, for benchmarks and metrics."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Adds up wall time per named stage.

    On CUDA the device is synchronised at each stage boundary so that the time lands on the stage
    that spent it; that costs throughput, so only pass a timer when measuring.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device is not None and self.device.type == "mps":
            torch.mps.synchronize()

    def reset(self) -> dict[str, float]:
        """Return the totals so far and start again from zero."""
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals


class _NoTimer:
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


NO_TIMER = _NoTimer()
