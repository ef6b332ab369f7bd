"""Engine speed on a bare GPU machine, in a fixed time budget.

Builds the real architecture with random weights (the official shapes; weights do not change
speed) and measures, at LR 320x180 (720p out) and 480x270 (1080p out), bf16, flow at HR as the
reference: the engine by stage, eager and compiled (reduce-overhead: inductor + CUDA graphs), on
1, 2, 4 and 8 batched sessions, plus the reference-style loop. Each case runs in its own process;
a case that would not finish in the budget is stopped and reported as skipped. Prints a table and
the ratios, and writes everything as JSON.

    python -m bench.gpu_check [--small] [--out DIR] [--budget SECONDS]

``--small`` runs the same plan on the CPU with the tiny checkpoint (compiling with the ``eager``
backend), so that the script is exercised by the tests and cannot rot.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .engine import Case, compare_outputs, format_table, machine, ratios, run_case

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
}


@dataclass
class Planned:
    name: str
    case: Case


def plan(config: dict[str, Any], model: str) -> list[Planned]:
    """Cheapest and most telling first: a tight budget drops the tail."""
    base = {**config["options"], "flow_weights": "random", "flow_resolution": "hr"}
    common = dict(model=model, frames=config["frames"], warmup=config["warmup"])
    planned = []
    for height, width in config["sizes"]:
        size = dict(height=height, width=width, **common)
        label = f"{width}x{height}"
        eager = Case("stream-diffvsr", options=base, sessions=config["sessions"], **size)
        sessions = config.get("compile_sessions", config["sessions"])
        compiled = replace(eager, options={**base, **config["compile"]}, sessions=sessions)
        planned += [Planned(f"{label} eager", eager), Planned(f"{label} compiled", compiled)]
        if not any(p.case.kind == "reference-loop" for p in planned):
            reference = Case("reference-loop", options=base, **size)
            planned.append(Planned(f"{label} reference loop", reference))
    # The offline upscaler's overlap (next flow on a side stream), last: the budget may drop it.
    first = next(p.case for p in planned if p.name.endswith("compiled"))
    overlap = replace(first, sessions=first.sessions[:1], prefetch_flow=True)
    planned.append(Planned(f"{first.width}x{first.height} compiled+prefetch", overlap))
    return planned


def _child(case: Case, queue) -> None:
    try:
        queue.put(("ok", run_case(case)))
    except Exception as exc:  # reported, the other cases go on
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_with_deadline(case: Case, seconds: float) -> tuple[str, Any]:
    """Run ``case`` in a fresh process; ("ok", results), ("error", message) or ("timeout", s)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(case, queue), daemon=True)
    process.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=1.0)
        except Exception:  # queue.Empty
            if not process.is_alive() and queue.empty():
                return "error", f"the process died (exit code {process.exitcode})"
    process.kill()
    return "timeout", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--small", action="store_true", help="tiny checkpoint on the CPU")
    parser.add_argument("--out", default=".", help="folder for gpu_check.json")
    parser.add_argument("--budget", type=float, default=390, help="seconds in all (default 390)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    config = SMALL if args.small else FULL

    from engine import write_random_checkpoint

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
        status, value = run_with_deadline(planned.case, left)
        took = time.monotonic() - case_started
        print(f"{planned.name}: {status} in {took:.0f} s", flush=True)
        if status == "ok":
            results += value
        else:
            skipped.append({"case": planned.name, "why": f"{status}: {value}"})
    compare_outputs(results)
    clean = [{k: v for k, v in r.items() if k != "last_frame"} for r in results]
    report = {
        "machine": machine(),
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
