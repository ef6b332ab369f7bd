"""A real Redis and real ``streamvsr serve`` processes on 127.0.0.1, for the cluster tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Redis:
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is needed for the cluster tests (Debian: redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    redis = Redis(f"redis://127.0.0.1:{port}/0", process)
    try:
        _wait_for(lambda: _accepts(port), 10, "redis-server to listen")
        yield redis
    finally:
        if process.poll() is None:
            redis.stop()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Node:
    id: str
    url: str
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_node(node_id: str, redis_url: str, log_dir: Path, *flags: str) -> Node:
    """``streamvsr serve`` with the bicubic engine as cluster node ``node_id``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_dir / f"{node_id}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVSR_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamvsr", "serve", "--engine", "bicubic", "--port", str(port),
         "--redis-url", redis_url, "--node-id", node_id, "--advertise-url", url,
         "--heartbeat-s", "0.2", "--node-timeout-s", "1.5",
         # Network rule (tests/support/webrtc.py): every ICE candidate is 127.0.0.1.
         "--host", "127.0.0.1", "--ice-host-addresses", "127.0.0.1", *flags],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    return Node(node_id, url, process, log)


@contextlib.contextmanager
def cluster_nodes(redis_url: str, log_dir: Path, count: int, *flags: str) -> Iterator[list[Node]]:
    """``count`` nodes (a, b, c, ...), each registered in Redis before this yields."""
    nodes = [start_node(chr(ord("a") + n), redis_url, log_dir, *flags) for n in range(count)]
    try:
        for node in nodes:
            _wait_for(lambda n=node: _registered(n), 60, f"node {node.id} to be ready")
        yield nodes
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.process.terminate()
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(15)
            if node.process.poll() is None:
                node.kill()


def _registered(node: Node) -> bool:
    if node.process.poll() is not None:
        raise AssertionError(f"node {node.id} exited:\n{node.output()}")
    return "cluster: connected to Redis" in node.log.read_text(errors="replace")
