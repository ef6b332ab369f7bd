"""Per-stage timing of an engine step, for benchmarks and metrics."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Adds up wall time per named stage, synchronising the device at every stage boundary.

    On CUDA (and MPS) the device is synchronised at each stage boundary so that the wall time lands
    exactly on the stage that spent it, host overhead included; that stalls the pipeline and costs
    throughput, so use it for benchmarks. For always-on metrics use ``EventStageTimer``.
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


class EventStageTimer(StageTimer):
    """Adds up GPU time per named stage with CUDA events, without synchronising inside the step.

    On CUDA each stage entry records a pair of timing events on the current stream (at entry and at
    exit); nothing waits for the GPU. ``reset()`` resolves the pairs: it waits for the recorded
    events (free when the step already synchronised, e.g. in its download) and sums
    ``start.elapsed_time(end)``. A stage thus gets the GPU-timeline span between its markers:
    the GPU time of its kernels, plus any time the GPU sat idle waiting for the host to launch
    them; work on other streams is not attributed. Unlike ``StageTimer`` this does not stall the
    pipeline, so the server can keep it on. Call ``reset()`` regularly (once per step): pending
    events are kept until then.

    On other devices it falls back to ``StageTimer`` (wall clock; CPU work is synchronous anyway).
    Repeated and nested stages accumulate in both modes.
    """

    def __init__(self, device: torch.device | str | None = None):
        super().__init__(device)
        self._cuda = self.device is not None and self.device.type == "cuda"
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._spare: list[torch.cuda.Event] = []  # resolved events, recorded again later

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self._cuda:
            with super().stage(name):
                yield
            return
        start = self._record()
        try:
            yield
        finally:
            self._pending.append((name, start, self._record()))

    def _record(self) -> torch.cuda.Event:
        event = self._spare.pop() if self._spare else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def reset(self) -> dict[str, float]:
        """Wait for the recorded events, return the totals so far and start again from zero."""
        pending, self._pending = self._pending, []
        for name, start, end in pending:
            start.synchronize()  # already done unless the stages changed streams
            end.synchronize()
            self.totals[name] += start.elapsed_time(end) / 1000
            self._spare += (start, end)
        return super().reset()


def stage_timer(device: torch.device | str | None, sync: bool) -> StageTimer:
    """A timer for ``device``: ``sync=True`` gives the synchronising ``StageTimer`` (benchmarks:
    exact wall time per stage), ``sync=False`` the ``EventStageTimer`` (metrics: no stalls)."""
    return StageTimer(device) if sync else EventStageTimer(device)


class _NoTimer:
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


NO_TIMER = _NoTimer()
