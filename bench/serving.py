"""Serving benchmark: real aiortc clients stream to a real ``streamvsr serve`` over loopback.

For 1, 2, ... concurrent streams it reports the server's receive->send latency (p50/p95/p99 from
its own histogram), what serving adds to the engine per frame (mean receive->send time minus queue
wait and engine step, plus encoding), encode ms per frame, the server process's CPU per stream and
frames in/out/dropped, and stops at the first stream count where frames are dropped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families

from streamvsr import startup

from .camera import PacedCamera
from .frames import moving_frames
from .histograms import bucket_quantile

FRAMES = 60  # a camera cycles through this many moving frames


def camera(width: int, height: int, fps: int, seed: int = 0) -> PacedCamera:
    """Moving LR frames at a fixed rate, like a webcam."""
    frames = moving_frames(height, width, FRAMES, seed=seed)
    return PacedCamera(lambda n: frames[n % FRAMES], fps)


@dataclass
class Client:
    pc: RTCPeerConnection
    received: int = 0
    reader: asyncio.Task | None = None


async def open_client(base: str, http: aiohttp.ClientSession, size, fps, seed) -> Client:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client = Client(pc)
    pc.addTransceiver(camera(*size, fps, seed), direction="sendrecv")

    @pc.on("track")
    def on_track(track) -> None:
        async def read() -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                client.received += 1

        client.reader = asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with http.post(f"{base}/offer", json=offer) as response:
        response.raise_for_status()
        answer = await response.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return client


def scrape(text: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f"|{k}={v}" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


def histogram_quantile(metrics: dict[str, Any], name: str, q: float, base=None) -> float | None:
    """Quantile of a scraped histogram, optionally of what it observed since ``base``."""
    buckets = [
        (float(k.split("le=")[1]), v - (base or {}).get(k, 0))
        for k, v in metrics.items()
        if k.startswith(f"{name}_bucket|")
    ]
    return bucket_quantile(buckets, q)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def measure(base: str, server: psutil.Process, streams: int, seconds: float, size, fps):
    async with aiohttp.ClientSession() as http:
        clients = [await open_client(base, http, size, fps, seed=i) for i in range(streams)]
        await asyncio.sleep(1.0)  # connect and warm up
        start = scrape(await (await http.get(f"{base}/metrics")).text())
        server.cpu_percent()
        received_start = sum(c.received for c in clients)
        await asyncio.sleep(seconds)
        cpu = server.cpu_percent()
        end = scrape(await (await http.get(f"{base}/metrics")).text())
        received = sum(c.received for c in clients) - received_start
        for client in clients:
            await client.pc.close()

    def delta(key: str) -> float:
        return end.get(key, 0) - start.get(key, 0)

    def mean(name: str) -> float | None:
        count = sum(delta(k) for k in end if k.startswith(f"{name}_count"))
        total = sum(delta(k) for k in end if k.startswith(f"{name}_sum"))
        return total / count if count else None

    dropped = sum(delta(k) for k in end if k.startswith("streamvsr_frames_dropped_total|"))
    name = "streamvsr_frame_latency_seconds"
    latency, wait, step = (
        mean(f"streamvsr_{n}_seconds") for n in ("frame_latency", "queue_wait", "engine_step")
    )
    encode = mean("streamvsr_encode_seconds")
    overhead = None
    if None not in (latency, wait, step):
        overhead = latency - wait - step + (encode or 0.0)
    return {
        "streams": streams,
        "frames_in": delta("streamvsr_frames_received_total"),
        "frames_out": delta("streamvsr_frames_sent_total"),
        "frames_dropped": dropped,
        "client_frames_per_s": received / seconds,
        "latency_p50_ms": _ms(histogram_quantile(end, name, 0.5, start)),
        "latency_p95_ms": _ms(histogram_quantile(end, name, 0.95, start)),
        "latency_p99_ms": _ms(histogram_quantile(end, name, 0.99, start)),
        "engine_step_mean_ms": _ms(step),
        "encode_mean_ms": _ms(encode),
        "serving_overhead_mean_ms": _ms(overhead),
        "server_cpu_percent": cpu,
        "server_cpu_percent_per_stream": cpu / streams,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 1)


def run(
    engine_args: list[str], max_streams: int, seconds: float, size, fps, env=None
) -> list[dict]:
    """Start ``streamvsr serve`` and measure 1..max_streams streams until frames drop."""
    startup.install(host_addresses=["127.0.0.1"])  # the clients, like the server, stay on loopback
    port = free_port()
    env = {**os.environ, **(env or {}), "STREAMVSR_SERVER__ICE_HOST_ADDRESSES": "127.0.0.1"}
    command = [sys.executable, "-m", "streamvsr", "serve", "--port", str(port), "--max-sessions",
               str(max_streams + 1), *engine_args]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_wait_ready(base, process))
        server = psutil.Process(process.pid)
        results = []
        for streams in range(1, max_streams + 1):
            result = asyncio.run(measure(base, server, streams, seconds, size, fps))
            results.append(result)
            if result["frames_dropped"] > 0.01 * max(result["frames_in"], 1):
                break
        return results
    finally:
        process.terminate()
        process.wait(10)


async def _wait_ready(base: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("the server did not become ready")


def format_table(results: list[dict]) -> str:
    head = ["streams", "frames in", "out", "dropped", "p50 ms", "p95 ms", "p99 ms", "engine ms",
            "encode ms", "serving ms", "CPU %", "CPU %/stream"]  # fmt: skip
    rows = [head]
    for r in results:
        rows.append([
            str(r["streams"]), f"{r['frames_in']:.0f}", f"{r['frames_out']:.0f}",
            f"{r['frames_dropped']:.0f}", str(r["latency_p50_ms"]), str(r["latency_p95_ms"]),
            str(r["latency_p99_ms"]), str(r["engine_step_mean_ms"]), str(r["encode_mean_ms"]),
            str(r["serving_overhead_mean_ms"]),
            f"{r['server_cpu_percent']:.0f}", f"{r['server_cpu_percent_per_stream']:.0f}",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
