"""npm packages for the interop tests (real third-party WebRTC stacks), installed on first use.

They go into ``.node_modules/`` at the repository root (ignored by git, never committed); a test
that needs one calls ``node_packages(...)``, which skips it, with the reason, where node, npm or
the registry is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFIX = ROOT / ".node_modules"


def node_packages(*specs: str) -> Path:
    """Install ``specs`` (e.g. ``"node-datachannel@0.33.4"``) unless present; returns the
    ``node_modules`` folder to put on ``NODE_PATH``."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for this interop test (Debian: apt-get install npm)")
    modules = PREFIX / "node_modules"
    missing = [spec for spec in specs if not (modules / _name(spec) / "package.json").is_file()]
    if missing:
        PREFIX.mkdir(exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund",
             *missing],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"npm could not install {missing}: {done.stderr.strip()[-300:]}")
    return modules


def _name(spec: str) -> str:
    """'@scope/pkg@1.2' -> '@scope/pkg'; 'pkg@1.2' -> 'pkg'."""
    at = spec.rfind("@")
    return spec[:at] if at > 0 else spec
