"""Engine benchmark: ms per frame, cross-session batching, stages, and the reference-loop baseline.

Each case (one engine with its settings) runs in its own process: the engine loads once, then
each session count warms up (with ``compile``: compiles that batch size, timed as ``warmup_s``)
and runs in turn. The headline numbers time whole steps, as serving runs them (one sync per step);
the per-stage breakdown comes from a few more steps with per-stage syncs. Last, each speed setting
is compared with the plain fp32 path on the same inputs and noise (``bench.deviation``). Results
are a list of dicts, one per session count (a table, optionally JSON).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch

from streamvsr import startup

STAGE_STEPS = 5  # at most, in the separate synchronised run that gives the per-stage breakdown
NOTES = {
    "ms_per_step": "whole steps, one sync each (the step's download), as the server runs them",
    "gpu_ms_per_step": "CUDA only: GPU time of a whole step, from events recorded around it",
    "stage_ms_per_step": "from a separate synchronised run (stage_steps steps, or for the "
    "reference loop the frames each stage ran on); per-stage syncs make it slower than the timed "
    "steps",
    "deviation": "frames of this setting against the plain fp32 path (same inputs, noise and "
    "RAFT weights, no compile, channels-last or SDPA choice), one session of `frames` frames: "
    "max and mean |difference| in grey levels, PSNR in dB (inf: identical)",
}


@dataclass
class Case:
    """One engine kind with its settings, run on each count of ``sessions`` batched streams."""

    kind: str  # "stream-diffvsr" | "bicubic" | "reference-loop"
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    height: int = 64
    width: int = 64
    frames: int = 50
    warmup: int = 3
    sessions: tuple[int, ...] = (1,)
    seed: int = 0
    prefetch_flow: bool = False  # start each next frame's flow during the step (as `upscale`)
    deviation_frames: int = 8  # at most, for the comparison with the plain fp32 path


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_case(case: Case) -> list[dict[str, Any]]:
    """Run one case in this process (see ``run_isolated`` for a fresh process)."""
    startup.install(chatter_level=logging.WARNING)  # a spawned process starts unconfigured
    rows: list[dict[str, Any]] = []
    for kind, value in iter_case(case):
        add_event(rows, kind, value)
    return rows


def add_event(rows: list[dict[str, Any]], kind: str, value: dict[str, Any]) -> None:
    """Apply one event of ``iter_case`` to the rows of its case collected so far."""
    if kind == "result":
        rows.append(value)
    else:  # "deviation": measured once per case, after all its rows
        for row in rows:
            row["deviation"] = value


def iter_case(case: Case) -> Iterator[tuple[str, dict[str, Any]]]:
    """("result", row) for each session count as it is measured, then for the engine's cases
    ("deviation", how far its frames are from the plain fp32 path's); see ``add_event``.

    The deviation comes last so that its second engine does not count in the memory numbers, and
    so that a case stopped by a deadline keeps the rows it measured."""
    from streamvsr.engine import BicubicEngine, load_engine

    from .deviation import deviation_from_plain

    torch.manual_seed(case.seed)  # flow_weights="random": RAFT's weights come from the global RNG
    if case.kind == "bicubic":
        engine = BicubicEngine(case.options.get("device", "cpu"))
    else:
        engine = load_engine(case.model, **case.options)
    if case.kind == "reference-loop":
        yield "result", _run_reference(engine, case)
        return
    for sessions in case.sessions:
        started = time.perf_counter()
        engine.warm_up([(case.height, case.width)], [sessions])  # e.g. compile, not timed
        warmup_s = time.perf_counter() - started
        yield "result", {**_run_sessions(engine, case, sessions), "warmup_s": warmup_s}
    if case.kind == "stream-diffvsr":
        yield "deviation", deviation_from_plain(engine, case)


def step_streams(engine, streams: list, prefetch: bool = False, timer=None) -> list[torch.Tensor]:
    """One batched step of every stream, as the server runs it (or, with ``prefetch``, as
    `upscale` does: each next frame's flow started during the step); their HR frames."""
    from streamvsr.engine import FrameRequest
    from streamvsr.engine.lookahead import advance

    if prefetch:
        return [frame for _, _, frame in advance(engine, streams, timer)]
    requests = [FrameRequest(s.state, s.current[1]) for s in streams]
    results = engine.step(requests, timer=timer)
    for stream, result in zip(streams, results, strict=True):
        stream.state, stream.current = result.state, next(stream.frames, None)
    return [result.frame for result in results]


class StepClock:
    """Times whole steps: wall clock and, on CUDA, the GPU time between two events recorded around
    each step. The events are read only at the end, so timing adds no sync to the step's own."""

    def __init__(self, device: torch.device):
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self.wall: list[float] = []
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        events = None
        if self._stream is not None:
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        if events:
            events[0].record(self._stream)
        yield
        if events:
            events[1].record(self._stream)
            self._events.append(events)
        self.wall.append(time.perf_counter() - start)

    def gpu(self) -> list[float]:
        """GPU seconds of each step (none off CUDA)."""
        for _, end in self._events:
            end.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in self._events]


def _run_sessions(engine, case: Case, sessions: int) -> dict[str, Any]:
    """``sessions`` streams advanced together, one batched step per frame, each step timed whole
    (its download is its only sync, as when serving); then a few more steps timed by stage."""
    from streamvsr.engine.lookahead import LookaheadSession

    # Per-stage syncs would serialise the side stream's flow with the step: no stages then.
    stage_steps = 0 if case.prefetch_flow else min(case.frames, STAGE_STEPS)
    length = case.frames + (1 + stage_steps if stage_steps else 0)
    streams = [
        LookaheadSession.start(engine, enumerate(clip_frames(case, s, length)), case.seed + s)
        for s in range(sessions)
    ]
    clock = StepClock(engine.device)
    with PeakRSS() as rss:
        rss_before = rss.process.memory_info().rss
        for n in range(case.frames):
            if n == case.warmup and engine.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(engine.device)
            with clock.step() if n >= case.warmup else contextlib.nullcontext():
                frames = step_streams(engine, streams, case.prefetch_flow)
    memory = _memory(engine.device, rss, rss_before)
    stages = _stage_breakdown(engine, streams, stage_steps)
    return {
        **_describe(case, sessions, engine),
        **_step_times(sessions, clock.wall, clock.gpu()),
        "stage_ms_per_step": stages,
        "stage_steps": dict.fromkeys(stages, stage_steps),
        **memory,
        "last_frame": frames[0].numpy(),
    }


def _stage_breakdown(engine, streams: list, steps: int) -> dict[str, float]:
    """ms per step of each stage, from ``steps`` more steps with the synchronising StageTimer.
    A separate run: its per-stage syncs stall the GPU, so these steps are slower than the timed
    ones. The first step is not counted, so that the switch to syncing is not either."""
    from streamvsr.engine import StageTimer

    if not steps:
        return {}
    timer = StageTimer(engine.device)
    step_streams(engine, streams, timer=timer)
    timer.reset()
    for _ in range(steps):
        step_streams(engine, streams, timer=timer)
    return {name: total * 1e3 / steps for name, total in sorted(timer.reset().items())}


def clip_frames(case: Case, stream: int, length: int | None = None) -> list[np.ndarray]:
    """The LR frames of ``stream`` (the first ``n`` are the same whatever ``length``)."""
    from .frames import moving_frames

    return moving_frames(case.height, case.width, length or case.frames, seed=case.seed + stream)


def _run_reference(engine, case: Case) -> dict[str, Any]:
    """The reference-style loop over the whole clip, after a run on a short clip (cuDNN, the
    allocator and lazy initialisation are then out of the timing, as for the engine)."""
    from diffusers import DDIMScheduler

    from streamvsr.engine import StageTimer
    from streamvsr.engine.loading import resolve_checkpoint

    from .reference_loop import upscale_sequence

    scheduler = DDIMScheduler.from_pretrained(resolve_checkpoint(case.model), subfolder="scheduler")
    clip = clip_frames(case, 0)
    upscale_sequence(engine, scheduler, clip[: max(case.warmup + 1, 2)], case.seed)
    timer = StageTimer(engine.device)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    with PeakRSS() as rss:
        rss_before = rss.process.memory_info().rss
        start = time.perf_counter()
        outputs, stage_frames = upscale_sequence(engine, scheduler, clip, case.seed, timer=timer)
        total = time.perf_counter() - start
    # Flow and ControlNet skip frame 0: each stage's total over the frames it ran on.
    stages = {k: v * 1e3 / stage_frames[k] for k, v in sorted(timer.reset().items())}
    return {
        **_describe(case, 1, engine),
        **_step_times(1, [total / case.frames] * case.frames, []),
        "stage_ms_per_step": stages,
        "stage_steps": {name: stage_frames[name] for name in stages},
        **_memory(engine.device, rss, rss_before),
        "last_frame": outputs[-1],
    }


def _describe(case: Case, sessions: int, engine) -> dict[str, Any]:
    return {
        "engine": case.kind,
        "model": case.model,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "lr_size": f"{case.width}x{case.height}",
        "hr_size": f"{case.width * 4}x{case.height * 4}",
        "flow_resolution": case.options.get("flow_resolution", "hr"),
        "speed": speed_label(case) if case.kind == "stream-diffvsr" else "-",
        "sessions": sessions,
        "frames": case.frames,
    }


def _step_times(sessions: int, wall: list[float], gpu: list[float]) -> dict[str, Any]:
    """The headline numbers, from whole steps (seconds each)."""
    per_step = float(np.mean(wall)) if wall else float("nan")
    times = {
        "ms_per_step": per_step * 1e3,
        "ms_per_frame": per_step * 1e3 / sessions,
        "p95_ms_per_step": float(np.percentile(wall, 95)) * 1e3 if wall else None,
        "frames_per_s": sessions / per_step,
    }
    if gpu:
        times["gpu_ms_per_step"] = float(np.mean(gpu)) * 1e3
    return times


def _memory(device: torch.device, rss: PeakRSS, rss_before: int) -> dict[str, Any]:
    memory = {
        "rss_growth_mb": (rss.peak - rss_before) / 2**20,
        "peak_rss_mb": rss.peak / 2**20,
    }
    if device.type == "cuda":
        memory["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        memory["gpu"] = torch.cuda.get_device_name(device)
    return memory


def speed_label(case: Case) -> str:
    """The speed settings of a case in a few characters: "eager", "reduce-overhead+cl" ..."""
    options = case.options
    label = "eager" if options.get("compile", "off") == "off" else options["compile"]
    if options.get("compile_backend", "inductor") != "inductor" and label != "eager":
        label += f"({options['compile_backend']})"
    if options.get("channels_last"):
        label += "+cl"
    if options.get("sdpa_backend", "auto") != "auto":
        label += f"+{options['sdpa_backend']}"
    if case.prefetch_flow:
        label += "+prefetch"
    return label


def run_isolated(case: Case) -> list[dict[str, Any]]:
    """Run ``case`` in a fresh process (spawned, so memory numbers are its own)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_case, case).result()


def run_all(cases: Sequence[Case], isolate: bool = True) -> list[dict[str, Any]]:
    results = [r for c in cases for r in (run_isolated(c) if isolate else run_case(c))]
    compare_outputs(results)
    return results


def compare_outputs(results: list[dict[str, Any]]) -> None:
    """Agreement of the last frame between the engine (1 session) and the reference loop."""
    single = [
        r
        for r in results
        if r["engine"] == "stream-diffvsr" and r["sessions"] == 1 and r["speed"] == "eager"
    ]
    for ref in (r for r in results if r["engine"] == "reference-loop"):
        for r in single:
            same = ("flow_resolution", "frames", "lr_size")
            if all(r[key] == ref[key] for key in same):
                diff = np.abs(r["last_frame"].astype(int) - ref["last_frame"].astype(int))
                ref["max_abs_diff_vs_engine"] = int(diff.max())


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Compiled vs eager (1 session), batching gain (most sessions vs 1), engine vs reference."""

    def ms(size, speed, sessions, engine="stream-diffvsr"):
        for r in results:
            if (r["engine"], r["lr_size"], r["sessions"]) == (engine, size, sessions) and (
                engine != "stream-diffvsr" or r["speed"] == speed
            ):
                return r["ms_per_frame"]
        return None

    out = {}
    for size in sorted({r["lr_size"] for r in results}):
        most = max(r["sessions"] for r in results if r["lr_size"] == size)
        for speed in sorted({r["speed"] for r in results if r["lr_size"] == size} - {"-"}):
            one, many = ms(size, speed, 1), ms(size, speed, most)
            if one and many:
                out[f"{size} {speed}: frames/s gain, {most} sessions vs 1"] = one / many
        eager = ms(size, "eager", 1)
        for speed in {r["speed"] for r in results if r["lr_size"] == size} - {"-", "eager"}:
            fast = ms(size, speed, 1)
            if eager and fast:
                out[f"{size} {speed} vs eager: speed-up, 1 session"] = eager / fast
        reference = ms(size, None, 1, engine="reference-loop")
        if reference and eager:
            out[f"{size} eager vs reference loop: speed-up"] = reference / eager
    return {k: round(v, 2) for k, v in out.items()}


def machine() -> dict[str, Any]:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def format_table(results: list[dict[str, Any]]) -> str:
    stages = sorted({s for r in results for s in r["stage_ms_per_step"]})
    head = ["engine", "speed", "sess", "lr", "dtype", "flow", "ms/frame", "fps", "gpu ms/step"]
    head += ["mem MB", "dev max", "dev mean", "PSNR", *stages]
    rows = [head]
    for r in results:
        mem = r.get("peak_gpu_mb", r["rss_growth_mb"])
        gpu = r.get("gpu_ms_per_step")
        rows.append(
            [
                r["engine"],
                r["speed"],
                str(r["sessions"]),
                r["lr_size"],
                r["dtype"],
                r["flow_resolution"],
                f"{r['ms_per_frame']:.1f}",
                f"{r['frames_per_s']:.1f}",
                "-" if gpu is None else f"{gpu:.1f}",
                f"{mem:.0f}",
                *_deviation_cells(r.get("deviation")),
            ]
            + [f"{r['stage_ms_per_step'].get(s, 0):.1f}" for s in stages]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    notes = [
        f"reference-loop vs engine, last frame: max |diff| = {r['max_abs_diff_vs_engine']}"
        for r in results
        if "max_abs_diff_vs_engine" in r
    ]
    legend = [
        "ms/frame, fps: whole steps, one sync each; gpu ms/step: GPU time of a step (CUDA events)",
        "mem: peak GPU MB, else RSS growth MB",
        "dev max/mean: grey levels from the plain fp32 path (same inputs and noise); PSNR in dB",
        "stage columns: ms per step (all sessions; reference-loop: per frame the stage ran on), "
        "from a SEPARATE synchronised run: per-stage syncs make it slower than the timed steps",
    ]
    return "\n".join([*lines, *legend, *notes])


def _deviation_cells(deviation: dict[str, Any] | None) -> list[str]:
    if deviation is None:
        return ["-", "-", "-"]
    return [str(deviation["max"]), f"{deviation['mean']:.3f}", f"{deviation['psnr_db']:.1f}"]


def to_json(results: list[dict[str, Any]], **sections: Any) -> str:
    """The engine results with their ratios, the machine, and other ``sections`` (serving ...)."""
    clean = [{k: v for k, v in r.items() if k != "last_frame"} for r in results]
    report = {
        "machine": machine(),
        "notes": NOTES,
        "ratios": ratios(clean),
        "results": clean,
        **sections,
    }
    return json.dumps(report, indent=2)
