"""The GPU worker: one thread that advances every live source (a page's camera, a WHIP stream) with
batched engine steps.

Each source has a one-frame mailbox. A new frame replaces an unprocessed one (newest wins; the old
one is counted as dropped), so however slow the engine is, a frame waits at most about one engine
step. At each tick the worker takes the waiting frames of up to ``max_batch`` sources of one frame
size, runs one ``engine.step`` on them, and hands each result back to the event loop.

Fairness: the source that has used the least engine time goes first (fair queuing, each source
charged its pixel share of each step), so a source with large frames gets the worker only between
the frames of cheaper ones; frames of another size wait for a later step instead of riding along.
Pixel work (converting a received frame, making the outgoing frames) runs here, off the event loop,
and only for frames that are not dropped as stale.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamvsr.engine import Engine, FrameRequest, PixelFormat, SessionState
from streamvsr.engine.timing import stage_timer

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A frame waiting for the engine, with what is needed to send its result on."""

    frame: np.ndarray | Callable[[], np.ndarray]  # RGB (H, W, 3), or made by this in the worker
    # time.monotonic() when the frame arrived (its first RTP packet): end-to-end latencies
    received_at: float
    context: Any = None  # passed back untouched (timestamps of the frame)
    shape: tuple[int, int] | None = None  # (H, W) of a frame made in the worker
    queued_at: float = field(default_factory=time.monotonic)  # offered to the scheduler

    @property
    def size(self) -> tuple[int, int]:
        return self.shape or self.frame.shape[:2]

    def pixels(self) -> np.ndarray:
        return self.frame() if callable(self.frame) else self.frame


@dataclass
class Processed:
    frame: Any  # uint8 tensor: (4H, 4W, 3) RGB or (6H, 4W) YUV planes, as pixel_format says
    received_at: float
    context: Any
    queue_wait: float
    step_time: float
    batch_size: int
    pixel_format: PixelFormat = PixelFormat.RGB24


@dataclass
class _Source:
    state: SessionState
    # Called in the worker with a result; returns what to run on the event loop (or None).
    deliver: Callable[[Processed], Callable[[], None] | None]
    pending: Pending | None = None
    waiting_since: float = 0.0
    busy: bool = False  # a frame of this source is in the engine now
    handing: int = 0  # results handed to the event loop, not yet run there
    used: float = 0.0  # engine seconds charged to this source (fair queuing)


class FrameScheduler:
    def __init__(
        self,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        max_batch: int = 8,
        max_wait_ms: float = 0.0,
        on_step: Callable[[int, float, dict[str, float]], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ):
        self.engine = engine
        self.loop = loop
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.on_step = on_step or (lambda *_: None)
        self.on_drop = on_drop or (lambda reason: None)
        self._sources: dict[str, _Source] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="streamvsr-gpu", daemon=True)
        # CUDA-event timing: per-stage GPU time for metrics without stalling the step.
        self._timer = stage_timer(getattr(engine, "device", None), sync=False)
        # Encoders take YUV 4:2:0: a GPU converts it in no time (and downloads half the bytes);
        # on a CPU the encoder's own conversion is faster than torch's.
        on_gpu = getattr(engine, "device", torch.device("cpu")).type == "cuda"
        self._pixel_format = PixelFormat.YUV420P if on_gpu else PixelFormat.RGB24

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- called from the event loop ---------------------------------------------------------

    def add_source(
        self, key: str, deliver: Callable[[Processed], Callable[[], None] | None], seed: int | None
    ) -> None:
        with self._cond:
            # A newcomer starts level with the least served source: no credit to catch up on.
            used = min((s.used for s in self._sources.values()), default=0.0)
            self._sources[key] = _Source(self.engine.new_session(seed), deliver, used=used)

    def remove_source(self, key: str) -> None:
        with self._cond:
            source = self._sources.pop(key, None)
        if source is not None and source.pending is not None:
            self.on_drop("session_closed")

    def submit(self, key: str, pending: Pending) -> None:
        """Offer a frame of source ``key``; an older frame still waiting is dropped."""
        with self._cond:
            source = self._sources.get(key)
            if source is None:
                return
            if source.pending is not None:
                self.on_drop("stale")
            else:
                source.waiting_since = pending.queued_at
            source.pending = pending
            self._cond.notify()

    def in_flight(self, key: str) -> bool:
        """Whether a frame of source ``key`` is in the engine or its result is on its way to the
        event loop (not a frame still waiting for the engine: a newer one would replace that)."""
        with self._cond:
            source = self._sources.get(key)
            return source is not None and (source.busy or source.handing > 0)

    # --- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._step(batch)
            except Exception:  # one bad step must not stop every source
                log.exception("engine step failed for %d frame(s); they are dropped", len(batch))
                for _ in batch:
                    self.on_drop("engine_error")
            finally:
                with self._cond:
                    for key, _, _ in batch:
                        if key in self._sources:
                            self._sources[key].busy = False

    def _ready(self) -> list[tuple[float, float, str]]:
        return sorted(
            (s.used, s.waiting_since, k)
            for k, s in self._sources.items()
            if s.pending is not None and not s.busy
        )

    def _next_batch(self) -> list[tuple[str, _Source, Pending]] | None:
        with self._cond:
            keys: list[str] = []
            while not keys:
                while not self._stopping and not self._ready():
                    self._cond.wait()
                if self._stopping:
                    return None
                if self.max_wait > 0 and len(self._ready()) < self.max_batch:
                    # Give other sources a moment to join (better batching, more latency).
                    self._cond.wait_for(
                        lambda: self._stopping or len(self._ready()) >= self.max_batch,
                        self.max_wait,
                    )
                # Re-read: the sources that were ready may have closed during the wait.
                keys = [key for *_, key in self._ready()]
            if self._stopping:
                return None
            size = self._sources[keys[0]].pending.size
            batch = []
            for key in keys:
                source = self._sources[key]
                if len(batch) < self.max_batch and source.pending.size == size:
                    batch.append((key, source, source.pending))
                    source.pending, source.busy = None, True
            return batch

    def _step(self, batch: list[tuple[str, _Source, Pending]]) -> None:
        started = time.monotonic()
        batch, frames = self._convert(batch)
        if not batch:
            return
        requests = [FrameRequest(s.state, frame) for (_, s, _), frame in zip(batch, frames)]
        results = self.engine.step(requests, timer=self._timer, pixel_format=self._pixel_format)
        step_time = time.monotonic() - started
        self.on_step(len(batch), step_time, self._timer.reset())
        for (key, source, pending), result in zip(batch, results):
            with self._cond:
                source.used += step_time / len(batch)  # one size per step: equal shares
                if self._sources.get(key) is not source:
                    continue  # the source closed while its frame was in the engine
                source.state = result.state
            processed = Processed(
                result.frame, pending.received_at, pending.context,
                queue_wait=started - pending.queued_at, step_time=step_time,
                batch_size=len(batch), pixel_format=result.pixel_format,
            )  # fmt: skip
            self._deliver(key, source, processed)

    def _convert(self, batch):
        """The batch's RGB frames, made here; a frame that cannot be made is dropped alone."""
        kept, frames = [], []
        for key, source, pending in batch:
            try:
                frames.append(pending.pixels())
            except Exception:  # a broken frame must not end the stream
                log.exception("session %.8s: could not convert a received frame", key)
                self.on_drop("decode_error")
                continue
            kept.append((key, source, pending))
        return kept, frames

    def _deliver(self, key: str, source: _Source, processed: Processed) -> None:
        try:
            handoff = source.deliver(processed)
        except Exception:
            log.exception("session %.8s: could not prepare an upscaled frame", key)
            return
        if handoff is not None:
            with self._cond:
                source.handing += 1
            self.loop.call_soon_threadsafe(self._hand_over, source, handoff)

    def _hand_over(self, source: _Source, handoff: Callable[[], None]) -> None:
        """Run on the event loop: the result reaches the session's outputs."""
        try:
            handoff()
        finally:
            with self._cond:
                source.handing -= 1
