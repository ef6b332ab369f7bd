"""Churn benchmark: many short sessions against a real ``streamvsr serve``, with its memory.

The server runs as a child process (bicubic engine by default), so that its resident memory and
thread count, read from /proc/PID, are its own. Real aiortc peers in this process open sessions
(the page's ``/offer``, a WHIP publisher, or a WHEP viewer of its own WHIP publisher), stream a few
small frames, close (WHIP and WHEP resources are DELETEd first, as OBS does) and are replaced,
``concurrency`` at a time. It reports RSS, threads and glibc's arena heaps before (idle, then with
``concurrency`` live sessions of each kind: threads per live session), every ``--every`` cycles,
when the last session has closed and after an idle settle, and the RSS growth per 1000 sessions
from the warmed-up server to the settled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamvsr import startup

from .camera import PacedCamera, SineAudio
from .frames import moving_frames
from .serving import free_port

KINDS = ("offer", "whip", "whep")
SERVER_SESSIONS = {"offer": 1, "whip": 1, "whep": 2}  # a WHEP cycle publishes what it views
MIB = 1024 * 1024
ARENA_BYTES = 64 * MIB  # glibc's HEAP_MAX_SIZE on 64-bit: each thread arena reserves this


# --- the server process --------------------------------------------------------------------------


def read_process(pid: int) -> dict[str, float]:
    """RSS (MiB: all, anonymous, peak), threads and malloc arena heaps of a process."""
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        status[key] = rest.strip()

    def mib(key: str) -> float:
        return round(int(status[key].split()[0]) / 1024, 1)

    return {
        "rss_mib": mib("VmRSS"),
        "anon_mib": mib("RssAnon"),
        "peak_rss_mib": mib("VmHWM"),
        "threads": int(status["Threads"]),
        "arena_heaps": count_arena_heaps(Path(f"/proc/{pid}/maps").read_text()),
    }


def count_arena_heaps(maps: str) -> int:
    """glibc's thread arena heaps (64 MiB each; an arena has one or more) in a /proc/PID/maps
    text: 64 MiB-aligned spans of anonymous memory, read-write then reserved (---p), the kernel
    merging neighbours of the same kind. Thread stacks and mmapped blocks are not laid out like
    that (an mmapped block of 64 MiB or more could be); the main arena is the [heap], not counted.
    """
    regions = []
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) > 5:  # a named mapping: a file, [heap], [stack]...
            continue
        low, high = (int(v, 16) for v in parts[0].split("-"))
        regions.append((low, high, parts[1]))
    regions.sort()
    heaps = 0
    for i, (low, high, perms) in enumerate(regions):
        first = -(-low // ARENA_BYTES) * ARENA_BYTES
        for start in range(first, high, ARENA_BYTES):
            heaps += perms.startswith("rw") and _heap_at(regions, i, start)
    return heaps


def _heap_at(regions: list[tuple[int, int, str]], i: int, start: int) -> bool:
    """Whether regions[i:] cover [start, start + 64 MiB) without gaps, read-write then none."""
    position, reserved = start, False
    for low, high, perms in regions[i:]:
        if position >= start + ARENA_BYTES:
            break
        if low > position:
            return False
        if perms.startswith("---"):
            reserved = True
        elif reserved or not perms.startswith("rw"):
            return False
        position = high
    return position >= start + ARENA_BYTES


class ServerProcess:
    """``python -m streamvsr serve`` on a free loopback port; its log goes to a file (a pipe
    nobody reads would fill up and stop it)."""

    def __init__(self, engine_args: list[str], places: int, env: dict[str, str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        handle, log = tempfile.mkstemp(prefix="streamvsr-churn-", suffix=".log")
        os.close(handle)
        self.log = Path(log)
        self.command = [
            sys.executable, "-m", "streamvsr", "serve", "--port", str(self.port),
            "--max-sessions", str(places), "--max-viewers", str(places),
            "--max-viewers-per-stream", str(places), *engine_args,
        ]  # fmt: skip
        self.env = {
            **os.environ,
            **(env or {}),
            "STREAMVSR_SERVER__ICE_HOST_ADDRESSES": "127.0.0.1",
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )

    async def wait_ready(self, timeout: float = 120) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base}/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"the server did not become ready: {self.log_tail()}")

    async def __aenter__(self) -> ServerProcess:
        """Started and ready (stopped again if it does not become ready)."""
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.stop()

    def sample(self) -> dict[str, float]:
        assert self.process is not None
        return read_process(self.process.pid)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)


# --- client peers --------------------------------------------------------------------------------


@dataclass
class Peer:
    """One client peer connection, what it received, and its resource on the server."""

    pc: RTCPeerConnection
    camera: PacedCamera | None = None
    received: int = 0
    location: str | None = None  # a WHIP or WHEP resource, DELETEd on close
    readers: list[asyncio.Task] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def read_tracks(self) -> None:
        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                if track.kind == "video":
                    self.received += 1
                    self._arrived.set()

    async def wait_received(self, frames: int) -> None:
        while self.received < frames:
            self._arrived.clear()
            await self._arrived.wait()

    async def wait_sent(self, frames: int) -> None:
        assert self.camera is not None
        while self.camera.count < frames:
            await asyncio.sleep(0.02)

    async def close(self, http: aiohttp.ClientSession) -> None:
        try:
            if self.location is not None:
                async with http.delete(self.location) as response:
                    await response.read()
        finally:
            await self.pc.close()
            for task in self.readers:
                task.cancel()
            await asyncio.gather(*self.readers, return_exceptions=True)


class Clients:
    """Opens the three kinds of client peers against one server."""

    def __init__(self, http: aiohttp.ClientSession, size: tuple[int, int], fps: float):
        self.http = http
        width, height = size
        self.frames = moving_frames(height, width, 30)
        self.fps = fps

    def _pc(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=[]))

    def _camera(self) -> PacedCamera:
        return PacedCamera(lambda n: self.frames[n % len(self.frames)], self.fps)

    async def _offer(self, peer: Peer) -> str:
        await peer.pc.setLocalDescription(await peer.pc.createOffer())
        return peer.pc.localDescription.sdp

    async def page(self) -> Peer:
        """The browser page: ``POST /offer`` (JSON), its video comes back upscaled."""
        peer = Peer(self._pc(), self._camera())
        peer.read_tracks()
        peer.pc.addTransceiver(peer.camera, direction="sendrecv")
        try:
            offer = {"type": "offer", "sdp": await self._offer(peer)}
            async with self.http.post("/offer", json=offer) as response:
                if response.status != 200:
                    raise RuntimeError(f"/offer: {response.status} {await response.text()}")
                answer = await response.json()
            await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        except BaseException:
            await peer.close(self.http)
            raise
        return peer

    async def whip(self, stream: str) -> Peer:
        """An OBS-like WHIP publisher of ``stream``: video and audio, send only."""
        peer = Peer(self._pc(), self._camera())
        peer.pc.addTransceiver(peer.camera, direction="sendonly")
        peer.pc.addTransceiver(SineAudio(amplitude=0.1), direction="sendonly")
        await self._exchange(peer, f"/whip/{stream}")
        return peer

    async def whep(self, stream: str) -> Peer:
        """A WHEP viewer of ``stream``: video and audio, receive only."""
        peer = Peer(self._pc())
        peer.read_tracks()
        peer.pc.addTransceiver("video", direction="recvonly")
        peer.pc.addTransceiver("audio", direction="recvonly")
        await self._exchange(peer, f"/whep/{stream}")
        return peer

    async def _exchange(self, peer: Peer, path: str) -> None:
        try:
            offer = await self._offer(peer)
            headers = {"Content-Type": "application/sdp"}
            async with self.http.post(path, data=offer, headers=headers) as response:
                if response.status != 201:
                    raise RuntimeError(f"{path}: {response.status} {await response.text()}")
                peer.location = response.headers["Location"]
                answer = await response.text()
            await peer.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        except BaseException:
            await peer.close(self.http)
            raise

    async def open(self, kind: str, stream: str, frames: int) -> list[Peer]:
        """The peers of one session of ``kind`` once ``frames`` video frames went through."""
        if kind == "offer":
            peer = await self.page()
            await peer.wait_received(frames)
            return [peer]
        publisher = await self.whip(stream)
        if kind == "whip":
            await publisher.wait_sent(frames)
            return [publisher]
        try:
            viewer = await self.whep(stream)
        except BaseException:
            await publisher.close(self.http)
            raise
        await viewer.wait_received(frames)
        return [viewer, publisher]

    async def cycle(self, kind: str, stream: str, frames: int, timeout: float) -> None:
        """Open a session of ``kind``, stream ``frames`` frames and close it again."""
        peers: list[Peer] = []

        async def run() -> None:
            peers.extend(await self.open(kind, stream, frames))

        try:
            await asyncio.wait_for(run(), timeout)
        finally:
            for peer in peers:
                with contextlib.suppress(Exception):
                    await peer.close(self.http)


# --- the benchmark -------------------------------------------------------------------------------


@dataclass
class Churn:
    sessions: int = 2000  # cycles: one session each, but a WHEP cycle's viewer and publisher
    concurrency: int = 4
    kinds: tuple[str, ...] = KINDS
    frames: int = 5  # video frames each session streams before it closes
    size: tuple[int, int] = (64, 48)  # client video (width, height)
    fps: float = 30
    every: int = 0  # cycles between samples (0: about ten samples)
    settle_s: float = 10.0  # idle seconds after the last close before the settled sample
    timeout_s: float = 30.0  # one cycle's limit
    engine_args: tuple[str, ...] = ("--engine", "bicubic")
    env: dict[str, str] = field(default_factory=dict)


async def _live_sessions(http: aiohttp.ClientSession) -> int:
    async with http.get("/readyz") as response:
        return int((await response.json())["sessions"])


async def _wait_closed(http: aiohttp.ClientSession, timeout: float) -> tuple[int, float]:
    """Wait until the server has no session; returns (sessions left, seconds waited)."""
    start = time.monotonic()
    live = await _live_sessions(http)
    while live and time.monotonic() - start < timeout:
        await asyncio.sleep(0.2)
        live = await _live_sessions(http)
    return live, time.monotonic() - start


async def _hold(clients: Clients, config: Churn, server: ServerProcess) -> dict[str, Any]:
    """``concurrency`` live sessions of each kind at once: the threads they take."""
    peers: list[Peer] = []
    names = (f"hold-{n}" for n in itertools.count())
    try:
        for kind in config.kinds:
            opening = [
                asyncio.wait_for(clients.open(kind, next(names), config.frames), config.timeout_s)
                for _ in range(config.concurrency)
            ]
            opened = await asyncio.gather(*opening, return_exceptions=True)
            peers.extend(p for group in opened if isinstance(group, list) for p in group)
            for error in opened:
                if isinstance(error, BaseException):
                    raise error
        await asyncio.sleep(1.0)  # every decoder and encoder has started
        live = await _live_sessions(clients.http)
        sample = server.sample()
    finally:
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.close(clients.http)
    return {**sample, "live": live}


async def _churn(config: Churn) -> dict[str, Any]:
    places = config.concurrency * len(config.kinds) + 2  # the hold: every kind at once
    async with ServerProcess(list(config.engine_args), places, config.env) as server:
        return await _measure(config, server)


async def _measure(config: Churn, server: ServerProcess) -> dict[str, Any]:
    every = config.every or max(1, config.sessions // 10)
    samples: list[dict[str, Any]] = []

    def record(label: str, cycles: int, live: int, **extra: Any) -> dict[str, Any]:
        row = {"label": label, "cycles": cycles, "live": live, **server.sample(), **extra}
        samples.append(row)
        return row

    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    async with aiohttp.ClientSession(base_url=server.base, timeout=timeout) as http:
        clients = Clients(http, config.size, config.fps)
        await asyncio.sleep(1.0)
        record("idle", 0, 0)
        hold = await _hold(clients, config, server)
        samples.append({"label": "held", "cycles": 0, **hold})
        idle_threads = samples[0]["threads"]
        threads_per_session = (hold["threads"] - idle_threads) / max(hold["live"], 1)
        await _wait_closed(http, config.timeout_s)
        await asyncio.sleep(1.0)
        record("warm", 0, 0)

        failures: dict[str, int] = {}
        done = 0
        server_sessions = 0
        queue = iter(range(config.sessions))
        started = time.monotonic()
        next_sample = every

        async def worker() -> None:
            nonlocal done, server_sessions, next_sample
            for n in queue:
                kind = config.kinds[n % len(config.kinds)]
                try:
                    await clients.cycle(kind, f"churn-{n}", config.frames, config.timeout_s)
                except Exception as exc:
                    reason = f"{kind}: {type(exc).__name__}: {str(exc)[:80]}"
                    failures[reason] = failures.get(reason, 0) + 1
                done += 1
                server_sessions += SERVER_SESSIONS[kind]
                if done >= next_sample and done < config.sessions:
                    next_sample += every
                    record("churning", done, await _live_sessions(http))

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        churn_s = time.monotonic() - started
        left, waited = await _wait_closed(http, config.timeout_s)
        after = record("closed", done, left, waited_s=round(waited, 1))
        await asyncio.sleep(config.settle_s)
        settled = record("settled", done, await _live_sessions(http))

    warm = next(s for s in samples if s["label"] == "warm")
    growth = settled["rss_mib"] - warm["rss_mib"]  # the first sessions' codecs, imports... aside
    return {
        "config": {
            **{k: v for k, v in dataclasses.asdict(config).items() if k != "env"},
            "size": f"{config.size[0]}x{config.size[1]}",
        },
        "samples": samples,
        "cycles": done,
        "server_sessions": server_sessions,
        "failures": failures,
        "churn_s": round(churn_s, 1),
        "sessions_per_s": round(done / churn_s, 2) if churn_s else None,
        "threads_per_live_session": round(threads_per_session, 2),
        "rss_growth_mib": round(growth, 1),
        "rss_growth_closed_mib": round(after["rss_mib"] - warm["rss_mib"], 1),
        "rss_mib_per_1000_cycles": round(growth / max(done, 1) * 1000, 1),
        "rss_above_idle_mib": round(settled["rss_mib"] - samples[0]["rss_mib"], 1),
        "threads_left": settled["threads"] - warm["threads"],
        "sessions_left": settled["live"],
    }


def run(config: Churn) -> dict[str, Any]:
    """Start the server, churn ``config.sessions`` sessions through it, and report."""
    startup.install(host_addresses=["127.0.0.1"])  # the clients, like the server, stay on loopback
    return asyncio.run(_churn(config))


def format_table(result: dict[str, Any]) -> str:
    head = ["sample", "cycles", "live", "RSS MiB", "anon MiB", "peak MiB", "threads", "heaps"]
    rows = [head]
    for s in result["samples"]:
        rows.append([
            s["label"], str(s["cycles"]), str(s["live"]), f"{s['rss_mib']:.1f}",
            f"{s['anon_mib']:.1f}", f"{s['peak_rss_mib']:.1f}", str(s["threads"]),
            str(s["arena_heaps"]),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    table = "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
    failures = sum(result["failures"].values())
    lines = [
        table,
        f"{result['cycles']} cycles ({result['server_sessions']} server sessions) in "
        f"{result['churn_s']} s ({result['sessions_per_s']}/s), {failures} failed",
        f"threads per live session: {result['threads_per_live_session']}",
        f"RSS growth, warm -> settled: {result['rss_growth_mib']:+.1f} MiB "
        f"({result['rss_mib_per_1000_cycles']:+.1f} MiB per 1000 cycles); settled RSS "
        f"{result['rss_above_idle_mib']:+.1f} MiB above idle; threads left: "
        f"{result['threads_left']:+d}; sessions left: {result['sessions_left']}",
    ]
    lines += [f"  failed x{n}: {reason}" for reason, n in sorted(result["failures"].items())]
    return "\n".join(lines)
