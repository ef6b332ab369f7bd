"""A real Prometheus on 127.0.0.1 for the deployment tests (Debian's ``prometheus``)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

LOOPBACK = "127.0.0.1"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prometheus(
    tmp_path: Path, targets: list[str], rule_files: list[str] = ()
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Prometheus at a free port, scraping ``targets`` (and evaluating ``rule_files``) every
    second; yields its base URL and process."""
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": "streamvsr", "static_configs": [{"targets": targets}]}],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        yield f"http://{LOOPBACK}:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def query(http: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector (the session's base URL is Prometheus's)."""
    async with http.get("/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    assert response.status == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]
