"""A regular (not editable) install works: one ``streamvsr`` namespace, the page and the default
settings inside it as package data, and nothing found through the source checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = (".git", ".venv", ".whl", "build", "*.egg-info", "__pycache__", "tests", ".*_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    source = tmp_path_factory.mktemp("source") / "streamvsr"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("streamvsr-*.whl")
    return path


def test_wheel_holds_one_namespace_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("streamvsr-")}
    assert top == {"streamvsr"}
    for needed in (
        "streamvsr/engine/stream_diffvsr.py",
        "streamvsr/server/app.py",
        "streamvsr/upscale/job.py",
        "streamvsr/bench/commands.py",
        "streamvsr/web/index.html",
        "streamvsr/web/app.js",
        "streamvsr/configs/default.yaml",
    ):
        assert needed in names


def test_installed_copy_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    script = (
        "import streamvsr, streamvsr.server.app as app, streamvsr.config as config\n"
        "print(streamvsr.__file__); print(app.WEB_ROOT); print(config.DEFAULT_CONFIG)\n"
        "assert (app.WEB_ROOT / 'index.html').is_file()\n"
        "assert config.load_settings(env={}).server.port == 8080\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in done.stdout.split():
        assert line.startswith(str(target)), done.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "streamvsr", "--help"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert usage.returncode == 0, usage.stderr
    for command in ("serve", "upscale", "bench", "bench-serving", "download"):
        assert command in usage.stdout


def test_nothing_imports_the_folders_as_top_level_packages() -> None:
    bare = re.compile(r"^\s*(from|import) (engine|server|bench|web|configs)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("streamvsr", "engine", "server", "bench", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if bare.search(path.read_text())
    ]
    assert offenders == []
