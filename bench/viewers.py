"""Viewer benchmark: one WHIP stream watched by more and more WHEP viewers of a real server.

The server (``streamvsr serve``, bicubic engine by default) runs as a child process, so that its
CPU time, read from /proc, is its own. One aiortc WHIP publisher streams moving video with audio;
then WHEP viewers join until there are 1, 5, 20 ... of them. For each count it reports the
server's CPU, the CPU each viewer adds over the publisher alone, the video encodes per second
(one per frame and codec when viewers share their stream's encoder; one per viewer otherwise),
and the frames each viewer received per second. The viewers count the frames they receive
instead of decoding them, so that the clients' own CPU stays small beside the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

from streamvsr import startup

from .churn import Clients, Peer, ServerProcess
from .serving import scrape

STREAM = "bench"


class CountingDecoder:
    """Stands in for a viewer's decoder: counts the video frames that arrive, decodes nothing."""

    frames = 0  # video frames, all viewers together

    def __init__(self, video: bool):
        self.video = video

    def decode(self, encoded_frame) -> list:
        CountingDecoder.frames += self.video
        return []


def counting_decoders(codec) -> CountingDecoder:
    return CountingDecoder(codec.mimeType.lower().startswith("video/"))


@dataclass
class ViewerBench:
    counts: tuple[int, ...] = (1, 5, 20)
    size: tuple[int, int] = (160, 90)  # the publisher's video (width, height)
    fps: float = 15
    seconds: float = 10.0  # measured per viewer count
    warmup_s: float = 3.0  # after viewers join: connected, keyframes in
    engine_args: tuple[str, ...] = ("--engine", "bicubic")


class Sample:
    """The server's CPU seconds, its metrics and the frames viewers got, at one moment."""

    def __init__(self, process: psutil.Process, metrics: dict[str, Any]):
        times = process.cpu_times()
        self.cpu = times.user + times.system
        self.at = time.monotonic()
        self.metrics = metrics
        self.frames = CountingDecoder.frames

    def since(self, start: Sample, viewers: int) -> dict[str, Any]:
        seconds = self.at - start.at

        def rate(prefix: str) -> float:
            keys = [k for k in self.metrics if k.startswith(prefix)]
            return sum(self.metrics[k] - start.metrics.get(k, 0) for k in keys) / seconds

        cpu = 100 * (self.cpu - start.cpu) / seconds
        received = (self.frames - start.frames) / seconds
        return {
            "viewers": viewers,
            "server_cpu_percent": round(cpu, 1),
            "encodes_per_s": round(rate("streamvsr_encode_seconds_count|"), 1),
            "frames_in_per_s": round(rate("streamvsr_frames_received_total"), 1),
            "frames_per_viewer_per_s": round(received / viewers, 1) if viewers else None,
            "dropped_per_s": round(rate("streamvsr_frames_dropped_total|"), 1),
        }


async def _sample(http: aiohttp.ClientSession, process: psutil.Process) -> Sample:
    async with http.get("/metrics") as response:
        return Sample(process, scrape(await response.text()))


async def _measure(bench: ViewerBench, server: ServerProcess) -> list[dict[str, Any]]:
    process = psutil.Process(server.process.pid)
    rows = []
    async with aiohttp.ClientSession(base_url=server.base) as http:
        clients = Clients(http, bench.size, bench.fps)
        peers: list[Peer] = [await clients.whip(STREAM)]
        try:
            for viewers in (0, *bench.counts):
                while len(peers) - 1 < viewers:
                    peers.append(await clients.whep(STREAM))
                await asyncio.sleep(bench.warmup_s)
                start = await _sample(http, process)
                await asyncio.sleep(bench.seconds)
                rows.append((await _sample(http, process)).since(start, viewers))
        finally:
            for peer in reversed(peers):
                with contextlib.suppress(Exception):
                    await peer.close(http)
    alone = rows[0]["server_cpu_percent"]
    for row in rows[1:]:
        row["cpu_percent_per_viewer"] = round(
            (row["server_cpu_percent"] - alone) / row["viewers"], 2
        )
    return rows


async def _run(bench: ViewerBench) -> list[dict[str, Any]]:
    places = max(bench.counts) + 2
    async with ServerProcess(list(bench.engine_args), places) as server:
        return await _measure(bench, server)


def run(bench: ViewerBench) -> list[dict[str, Any]]:
    """Start the server, publish one stream, and measure it with each count of viewers."""
    # The clients stay on loopback like the server, and count frames instead of decoding them.
    startup.install(host_addresses=["127.0.0.1"], decoder_factory=counting_decoders)
    return asyncio.run(_run(bench))


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["viewers", "CPU %", "CPU %/viewer", "encodes/s", "frames in/s", "frames/s/viewer",
            "dropped/s"]  # fmt: skip
    table = [head]
    for r in rows:
        table.append([
            str(r["viewers"]), f"{r['server_cpu_percent']:.1f}",
            str(r.get("cpu_percent_per_viewer", "-")), f"{r['encodes_per_s']:.1f}",
            f"{r['frames_in_per_s']:.1f}", str(r["frames_per_viewer_per_s"] or "-"),
            f"{r['dropped_per_s']:.1f}",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)
