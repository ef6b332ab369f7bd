"""Engine benchmark: ms per frame by stage, cross-session batching, and the reference-loop baseline.

Each case (one engine with its settings) runs in its own process: the engine loads once, then
each session count warms up (with ``compile``: compiles that batch size, timed as ``warmup_s``)
and runs in turn. Results are a list of dicts, one per session count (a table, optionally JSON).
"""

from __future__ import annotations

import json
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
    return list(iter_case(case))


def iter_case(case: Case) -> Iterator[dict[str, Any]]:
    """The results of ``case``, one per session count, as each is measured."""
    from engine import BicubicEngine, load_engine

    torch.manual_seed(case.seed)
    if case.kind == "bicubic":
        engine = BicubicEngine(case.options.get("device", "cpu"))
    else:
        engine = load_engine(case.model, **case.options)
    if case.kind == "reference-loop":
        yield _run_reference(engine, case)
        return
    for sessions in case.sessions:
        started = time.perf_counter()
        engine.warm_up([(case.height, case.width)], [sessions])  # e.g. compile, not timed
        warmup_s = time.perf_counter() - started
        yield {**_run_sessions(engine, case, sessions), "warmup_s": warmup_s}


def _run_sessions(engine, case: Case, sessions: int) -> dict[str, Any]:
    """``sessions`` streams advanced together, one batched step per frame."""
    from engine import FrameRequest, StageTimer
    from server.upscale.pipelined import Stream, advance

    # Per-stage syncs would serialise the side stream's flow with the step: no stages then.
    timer = None if case.prefetch_flow else StageTimer(engine.device)
    streams = [
        Stream.start(engine, enumerate(_clip(case, s)), case.seed + s) for s in range(sessions)
    ]
    last: list[np.ndarray] = []
    tick_times = []
    with PeakRSS() as rss:
        rss_before = rss.process.memory_info().rss
        for n in range(case.frames):
            if n == case.warmup:
                if timer is not None:
                    timer.reset()
                if engine.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(engine.device)
            start = time.perf_counter()
            if case.prefetch_flow:
                done = advance(engine, streams)
            else:
                requests = [FrameRequest(s.state, s.current[1]) for s in streams]
                results = engine.step(requests, timer=timer)
                done = []
                for stream, result in zip(streams, results):
                    stream.state, stream.current = result.state, next(stream.frames, None)
                    done.append((stream, n, result.frame))
            if n >= case.warmup:
                tick_times.append(time.perf_counter() - start)
            last = [frame.numpy() for _, _, frame in done]
    stages = timer.reset() if timer else {}
    return _summary(case, sessions, engine, tick_times, stages, rss, rss_before, last[0])


def _clip(case: Case, stream: int) -> list[np.ndarray]:
    from .frames import moving_frames

    return moving_frames(case.height, case.width, case.frames, seed=case.seed + stream)


def _run_reference(engine, case: Case) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    from engine import StageTimer
    from engine.loading import resolve_checkpoint

    from .reference_loop import upscale_sequence

    scheduler = DDIMScheduler.from_pretrained(resolve_checkpoint(case.model), subfolder="scheduler")
    timer = StageTimer(engine.device)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    with PeakRSS() as rss:
        rss_before = rss.process.memory_info().rss
        start = time.perf_counter()
        outputs = upscale_sequence(engine, scheduler, _clip(case, 0), case.seed, timer=timer)
        total = time.perf_counter() - start
    ticks = [total / case.frames] * case.frames
    stages = timer.reset()
    return _summary(case, 1, engine, ticks, stages, rss, rss_before, outputs[-1], case.frames)


def _summary(
    case, sessions, engine, tick_times, stages, rss, rss_before, last_frame, frames_per_stage=None
):
    measured = len(tick_times)
    per_tick = float(np.mean(tick_times)) if tick_times else float("nan")
    result = {
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
        "ms_per_step": per_tick * 1e3,
        "ms_per_frame": per_tick * 1e3 / sessions,
        "p95_ms_per_step": float(np.percentile(tick_times, 95)) * 1e3 if tick_times else None,
        "frames_per_s": sessions / per_tick,
        "stage_ms_per_step": {
            k: v * 1e3 / (frames_per_stage or measured) for k, v in sorted(stages.items())
        },
        "rss_growth_mb": (rss.peak - rss_before) / 2**20,
        "peak_rss_mb": rss.peak / 2**20,
        "last_frame": last_frame,
    }
    if engine.device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(engine.device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(engine.device)
    return result


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
    head = ["engine", "speed", "sess", "lr", "dtype", "flow", "ms/frame", "fps", "mem MB", *stages]
    rows = [head]
    for r in results:
        mem = r.get("peak_gpu_mb", r["rss_growth_mb"])
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
                f"{mem:.0f}",
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
    legend = (
        "stage columns: ms per engine step (all sessions); mem: peak GPU MB, else RSS growth MB"
    )
    return "\n".join([*lines, legend, *notes])


def to_json(results: list[dict[str, Any]], **sections: Any) -> str:
    """The engine results with their ratios, the machine, and other ``sections`` (serving ...)."""
    clean = [{k: v for k, v in r.items() if k != "last_frame"} for r in results]
    report = {"machine": machine(), "ratios": ratios(clean), "results": clean, **sections}
    return json.dumps(report, indent=2)
