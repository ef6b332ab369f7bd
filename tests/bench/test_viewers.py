"""``streamvsr bench-serving --viewers``: one stream watched by more viewers, through a real
server, reports its CPU per viewer and one encode per frame however many watch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_viewers_of_one_stream_share_its_encodes(tmp_path: Path) -> None:
    out = tmp_path / "viewers.json"
    command = [sys.executable, "-m", "streamvsr", "bench-serving", "--viewers", "1,3",
               "--seconds", "2", "--json", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CPU %/viewer" in run.stdout
    rows = json.loads(out.read_text())
    assert [r["viewers"] for r in rows] == [0, 1, 3]
    alone, one, three = rows
    assert alone["encodes_per_s"] == 0 and alone["frames_in_per_s"] > 5
    for row in (one, three):
        assert row["frames_per_viewer_per_s"] > 5
        assert row["encodes_per_s"] <= row["frames_in_per_s"] * 1.2  # once, not per viewer
        assert "cpu_percent_per_viewer" in row
