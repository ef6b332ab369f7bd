"""Engine speed on a bare GPU machine, in a fixed time budget.

Builds the real architecture with random weights (the official shapes; weights do not change
speed) and measures, at LR 320x180 (720p out) and 480x270 (1080p out), bf16, flow at HR as the
reference: the engine by whole steps (and by stage in a separate synchronised run), eager and
compiled (reduce-overhead: inductor + CUDA graphs), on 1, 2, 4 and 8 batched sessions, plus the
reference-style loop; each setting's deviation from the plain fp32 path. Each case runs in its own
process; a case that would not finish in the budget is stopped and reported as skipped (keeping
the session counts it measured). Prints a table and the ratios, and writes everything as JSON.

    python -m bench.gpu_check [--small] [--out DIR] [--budget SECONDS]

``--small`` runs the same plan on the CPU with the tiny checkpoint (compiling with the ``eager``
backend), so that the script is exercised by the tests and cannot rot.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streamvsr import startup

from .engine_speed import (
    NOTES,
    Case,
    add_event,
    compare_outputs,
    format_table,
    iter_case,
    machine,
    ratios,
)

FULL = {
    "sizes": [(180, 320), (270, 480)],
    "sessions": (1, 2, 4, 8),
    "frames": 12,
    "warmup": 3,
    "options": {"device": "cuda", "dtype": "bf16", "flow_model": "raft_large"},
    "compile": {"compile": "reduce-overhead"},
    "checkpoint": "full",
}
SMALL = {
    "sizes": [(32, 32), (32, 48)],  # the reference loop runs RAFT at HR: at least 128 px
    "sessions": (1, 2),
    "frames": 3,
    "warmup": 1,
    "options": {"device": "cpu", "dtype": "fp32", "flow_model": "raft_small"},
    "compile": {"compile": "default", "compile_backend": "eager"},
    "compile_sessions": (1,),  # tracing the tiny model for each batch class takes a while on a CPU
    "checkpoint": "tiny",
    # Two OpenMP workers that spin against PeakRSS's sampling thread made some tiny-model steps
    # take 10-30 s instead of 0.6 s on a 2-core machine: one intra-op thread.
    "threads": 1,
}


@dataclass
class Planned:
    name: str
    case: Case


def plan(config: dict[str, Any], model: str) -> list[Planned]:
    """The first size eager, the reference loop and the first size compiled (the headline), then
    the other sizes: a tight budget drops the tail, and a case stopped by the budget keeps the
    session counts it measured."""
    base = {**config["options"], "flow_weights": "random", "flow_resolution": "hr"}
    common = dict(model=model, frames=config["frames"], warmup=config["warmup"])
    eager, compiled = [], []
    for height, width in config["sizes"]:
        label = f"{width}x{height}"
        case = Case(
            "stream-diffvsr", options=base, sessions=config["sessions"],
            height=height, width=width, **common,
        )  # fmt: skip
        eager.append(Planned(f"{label} eager", case))
        sessions = config.get("compile_sessions", config["sessions"])
        options = {**base, **config["compile"]}
        compiled.append(
            Planned(f"{label} compiled", replace(case, options=options, sessions=sessions))
        )
    first = eager[0].case
    reference = Case(
        "reference-loop", options=base, height=first.height, width=first.width, **common
    )
    overlap = replace(compiled[0].case, sessions=(1,), prefetch_flow=True)
    label = f"{first.width}x{first.height}"
    plan = [eager[0], Planned(f"{label} reference loop", reference), compiled[0]]
    for more_eager, more_compiled in zip(eager[1:], compiled[1:]):
        plan += [more_eager, more_compiled]
    return [*plan, Planned(f"{label} compiled+prefetch", overlap)]


def _child(case: Case, queue, threads: int | None) -> None:
    # A spawned process starts unconfigured: quiet the libraries, and the threads asked for.
    startup.install(chatter_level=logging.WARNING, cpu_threads=threads or None)
    try:
        for event in iter_case(case):
            queue.put(event)
        queue.put(("ok", None))
    except Exception as exc:  # reported, the other cases go on
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_with_deadline(
    case: Case, seconds: float, threads: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Run ``case`` in a fresh process: (results measured in time, "ok" | why it stopped)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(case, queue, threads), daemon=True)
    process.start()
    deadline = time.monotonic() + seconds
    results = []
    while time.monotonic() < deadline:
        try:
            kind, value = queue.get(timeout=1.0)
        except Exception:  # queue.Empty
            if not process.is_alive() and queue.empty():
                return results, f"error: the process died (exit code {process.exitcode})"
            continue
        if kind in ("result", "deviation"):
            add_event(results, kind, value)
        else:
            return results, "ok" if kind == "ok" else f"error: {value}"
    process.kill()
    return results, f"timeout after {seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--small", action="store_true", help="tiny checkpoint on the CPU")
    parser.add_argument("--out", default=".", help="folder for gpu_check.json")
    parser.add_argument("--budget", type=float, default=300, help="seconds in all (default 300)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    config = SMALL if args.small else FULL

    from streamvsr.engine import write_random_checkpoint

    model = write_random_checkpoint(
        Path(tempfile.mkdtemp()) / "ckpt", size=config["checkpoint"], seed=0
    )
    print(f"checkpoint ({config['checkpoint']}) written in {time.monotonic() - started:.0f} s")
    results, skipped = [], []
    for planned in plan(config, str(model)):
        left = args.budget - (time.monotonic() - started)
        if left < 10:
            skipped.append({"case": planned.name, "why": "no time left"})
            continue
        case_started = time.monotonic()
        measured, status = run_with_deadline(planned.case, left, config.get("threads"))
        took = time.monotonic() - case_started
        print(f"{planned.name}: {len(measured)} result(s), {status}, {took:.0f} s", flush=True)
        results += measured
        if status != "ok":
            skipped.append({"case": planned.name, "why": status})
    compare_outputs(results)
    clean = [{k: v for k, v in r.items() if k != "last_frame"} for r in results]
    report = {
        "machine": machine(),
        "notes": NOTES,
        "mode": "small" if args.small else "full",
        "seconds": round(time.monotonic() - started, 1),
        "ratios": ratios(clean),
        "results": clean,
        "skipped": skipped,
    }
    if results:
        print(format_table(results))
    print(json.dumps(report["ratios"], indent=2))
    for item in skipped:
        print(f"skipped {item['case']}: {item['why']}")
    out = Path(args.out) / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out} ({report['seconds']} s)")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
