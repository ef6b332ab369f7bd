"""``streamvsr bench-churn``: a tiny churn through a real server reports its memory and threads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streamvsr.bench.churn import count_arena_heaps

HEAP = 64 << 20


def mapping(low: int, high: int, perms: str, name: str = "") -> str:
    return f"{low:012x}-{high:012x} {perms} 00000000 00:00 0 {name}".rstrip()


def test_arena_heaps_are_counted_from_the_memory_map() -> None:
    maps = "\n".join([
        mapping(5 * HEAP, 5 * HEAP + HEAP // 4, "rw-p"),  # a heap: used, then reserved
        mapping(5 * HEAP + HEAP // 4, 6 * HEAP, "---p"),
        mapping(6 * HEAP, 7 * HEAP + HEAP // 2, "rw-p"),  # a full heap merged with the next one
        mapping(7 * HEAP + HEAP // 2, 8 * HEAP, "---p"),
        mapping(8 * HEAP + 4096, 8 * HEAP + 8192, "rw-p"),  # a small block: not a heap
        mapping(9 * HEAP, 9 * HEAP + 4096, "r--p", "/usr/lib/libc.so.6"),
        mapping(10 * HEAP, 10 * HEAP + HEAP // 2, "rw-p"),  # aligned, but ends after 32 MiB
        mapping(12 * HEAP, 12 * HEAP + HEAP // 2, "---p"),  # reserved only
    ])  # fmt: skip
    assert count_arena_heaps(maps) == 3


def test_a_tiny_churn_reports_memory_threads_and_sessions(tmp_path: Path) -> None:
    out = tmp_path / "churn.json"
    command = [sys.executable, "-m", "streamvsr", "bench-churn", "--sessions", "6",
               "--concurrency", "2", "--frames", "3", "--settle", "0.5",
               "--json", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "RSS MiB" in run.stdout and "threads per live session" in run.stdout
    result = json.loads(out.read_text())
    labels = [s["label"] for s in result["samples"]]
    assert labels[:3] == ["idle", "held", "warm"] and labels[-2:] == ["closed", "settled"]
    assert result["cycles"] == 6 and result["server_sessions"] == 8  # two WHEP cycles: 2 each
    assert result["failures"] == {} and result["sessions_left"] == 0
    held = result["samples"][1]
    assert held["live"] == 8  # two of each kind, a WHEP viewer with its publisher
    assert 0 < result["threads_per_live_session"] < 10
    assert all(s["rss_mib"] > 0 and s["threads"] > 0 for s in result["samples"])
    assert {"rss_mib_per_1000_cycles", "rss_above_idle_mib", "churn_s"} <= set(result)
