"""The GPU measurement script runs its whole plan in small mode on the CPU, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_small_mode_runs_its_whole_plan(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "STREAMVSR_TEST_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 = this venv
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--small", "--budget", "900"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "small"
    assert report["skipped"] == []
    rows = {(r["engine"], r["lr_size"], r["speed"], r["sessions"]) for r in report["results"]}
    for size in ("32x32", "48x32"):
        assert {("stream-diffvsr", size, "eager", n) for n in (1, 2)} <= rows
        assert ("stream-diffvsr", size, "default(eager)", 1) in rows
    assert ("reference-loop", "32x32", "-", 1) in rows
    assert ("stream-diffvsr", "32x32", "default(eager)+prefetch", 1) in rows
    for row in report["results"]:
        assert row["ms_per_frame"] > 0
        assert row["stage_ms_per_step"] or row["speed"].endswith("+prefetch")
    compiled = [r for r in report["results"] if r["speed"] != "eager" and r["speed"] != "-"]
    assert all(r["warmup_s"] > 0 for r in compiled)
    # Every engine setting reports its deviation from plain fp32 (small mode: eager is fp32).
    for row in report["results"]:
        if row["engine"] == "stream-diffvsr":
            assert row["deviation"]["max"] <= (0 if row["speed"] == "eager" else 1), row
    assert "stage_ms_per_step" in report["notes"] and "dev max" in run.stdout
    ratios = report["ratios"]
    assert "32x32 eager: frames/s gain, 2 sessions vs 1" in ratios
    assert "32x32 default(eager) vs eager: speed-up, 1 session" in ratios
    assert "32x32 eager vs reference loop: speed-up" in ratios
    assert "skipped" not in run.stdout
