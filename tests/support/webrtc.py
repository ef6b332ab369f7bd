"""Helpers for the server's end-to-end tests: a server on a free loopback port, aiortc client peers
(browser-like /offer, OBS-like WHIP, WHEP viewers), synthetic media and metric scraping.

Network rule: every ICE candidate is 127.0.0.1 (the server's ``ice_host_addresses`` and the
``loopback_ice`` fixture of tests/conftest.py) and client peers never get an ICE server.

Synthetic video frames carry their own index (an 8-bit code in a band at the top: white/black
blocks) and a bright vertical bar whose position follows the index, so that a received 4x frame
can be matched to the exact frame that was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aioice.stun
import numpy as np
from aiohttp import web
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from streamvsr.bench.camera import PacedCamera, SineAudio
from streamvsr.bench.histograms import bucket_quantile
from streamvsr.config import load_settings
from streamvsr.engines import EngineChoice
from streamvsr.server.app import create_app

LOOPBACK = "127.0.0.1"
PROBLEM = "application/problem+json"

CODE_BITS = 8  # blocks in the index band
CODE_HEIGHT = 8  # LR rows of the index band
BAR_WIDTH = 6
BAR_STEP = 3  # LR pixels the bar moves per frame
BAR_VALUE = 230
BACKGROUND = (40, 40, 40)


# --- synthetic content ---------------------------------------------------------------------------


def bar_x(index: int, width: int) -> int:
    return (BAR_STEP * index) % (width - BAR_WIDTH)


def pattern(
    index: int, width: int = 64, height: int = 48, background: tuple[int, int, int] = BACKGROUND
) -> np.ndarray:
    """Frame ``index`` (uint8 RGB, (height, width, 3)): index code on top, a moving bar below."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    x = bar_x(index, width)
    img[CODE_HEIGHT:, x : x + BAR_WIDTH] = BAR_VALUE
    block = width // CODE_BITS
    for bit in range(CODE_BITS):
        img[:CODE_HEIGHT, bit * block : (bit + 1) * block] = 235 if index >> bit & 1 else 15
    return img


def downscale(hr: np.ndarray, factor: int = 4) -> np.ndarray:
    """Area-average an (H*f, W*f, 3) frame to (H, W, 3) float."""
    h, w = hr.shape[0] // factor, hr.shape[1] // factor
    return hr[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))


def decode_index(lr: np.ndarray) -> int:
    """The index code of a (downscaled) frame made by ``pattern`` (mod 256)."""
    block = lr.shape[1] // CODE_BITS
    index = 0
    for bit in range(CODE_BITS):
        cell = lr[2 : CODE_HEIGHT - 2, bit * block + 2 : (bit + 1) * block - 2]
        if cell.mean() > 128:
            index |= 1 << bit
    return index


def find_bar(lr: np.ndarray) -> int:
    """Left column of the brightest BAR_WIDTH-wide vertical stripe below the index band."""
    columns = lr[CODE_HEIGHT:].mean(axis=(0, 2))
    window = np.convolve(columns, np.ones(BAR_WIDTH), mode="valid")
    return int(np.argmax(window))


def identify(received: np.ndarray, video: SyntheticVideo, factor: int = 4) -> tuple[int, float]:
    """Which sent frame of ``video`` a received (upscaled) frame shows: its index, found from the
    index code, and the mean absolute difference (0-255) between the received frame scaled back
    down and that sent frame. Asserts that the bar is where that frame had it."""
    lr = downscale(received, factor)
    code = decode_index(lr)
    candidates = [n for n in video.sent if n % 256 == code]
    assert candidates, f"received a frame with index code {code} that was never sent"
    n = max(candidates)
    sent = video.sent[n][1]
    assert lr.shape == sent.shape, (lr.shape, sent.shape)
    assert abs(find_bar(lr) - bar_x(n, sent.shape[1])) <= 1, (n, find_bar(lr))
    return n, float(np.abs(lr - sent).mean())


# --- media tracks --------------------------------------------------------------------------------


class SyntheticVideo(PacedCamera):
    """The benchmarks' paced camera showing ``pattern`` frames (or ``make_frame``'s), each kept in
    ``sent``: 90 kHz pts, 30 fps by default."""

    def __init__(
        self, make_frame: Callable[[int], np.ndarray] = pattern, fps: float = 30, first: int = 0
    ):
        super().__init__(make_frame, fps, first, keep_sent=True)


@dataclass
class Received:
    at: float  # time.monotonic() of arrival
    pts: int
    width: int  # audio: samples per channel
    height: int  # audio: 0
    image: np.ndarray | None  # RGB (video) or interleaved samples (audio)


class Collector:
    """Reads every remote track of a peer and keeps what arrived, per kind."""

    def __init__(self, keep_images: bool = True):
        self.keep_images = keep_images
        self.video: list[Received] = []
        self.audio: list[Received] = []
        self.tasks: list[asyncio.Task] = []
        self._changed = asyncio.Event()

    def attach(self, pc: RTCPeerConnection) -> None:
        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                at = time.monotonic()
                if track.kind == "video":
                    image = frame.to_ndarray(format="rgb24") if self.keep_images else None
                    self.video.append(Received(at, frame.pts, frame.width, frame.height, image))
                else:
                    samples = frame.to_ndarray() if self.keep_images else None
                    self.audio.append(Received(at, frame.pts, frame.samples, 0, samples))
                self._changed.set()

    async def wait_video(self, count: int, timeout: float = 10.0) -> None:
        await self._wait(lambda: len(self.video) >= count, timeout, f"{count} video frames")

    async def wait_audio(self, count: int, timeout: float = 10.0) -> None:
        await self._wait(lambda: len(self.audio) >= count, timeout, f"{count} audio frames")

    async def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out waiting for {what}: got {len(self.video)} video, "
                    f"{len(self.audio)} audio"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --- peers ---------------------------------------------------------------------------------------


def client_pc() -> RTCPeerConnection:
    """A client peer that contacts no STUN/TURN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class StunResponder(asyncio.DatagramProtocol):
    """A minimal STUN server on 127.0.0.1 (binding requests only), so that a server configured
    with an ICE server gathers without waiting for an unreachable one."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            request = aioice.stun.parse_message(data)
        except ValueError:
            return
        if request.message_method != aioice.stun.Method.BINDING:
            return
        self.requests += 1
        response = aioice.stun.Message(
            message_method=aioice.stun.Method.BINDING,
            message_class=aioice.stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        self.transport.sendto(bytes(response), addr)

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]


@contextlib.asynccontextmanager
async def stun_server() -> AsyncIterator[StunResponder]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        StunResponder, local_addr=(LOOPBACK, 0)
    )
    try:
        yield protocol
    finally:
        transport.close()


def codec(kind: str, mime: str, **parameters: str):
    """The one local codec capability of that mime type (and those fmtp parameters)."""
    found = [
        c
        for c in RTCRtpSender.getCapabilities(kind).codecs
        if c.mimeType.lower() == mime.lower()
        and all(c.parameters.get(k) == v for k, v in parameters.items())
    ]
    assert len(found) == 1, found
    return found[0]


def strip_candidates(sdp: str) -> str:
    """An offer as OBS sends it: no ICE candidates (and no end-of-candidates), so no address in
    the m= and c= lines either (port 9, 0.0.0.0)."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        if line.startswith("m="):
            kind, _port, rest = line.split(" ", 2)
            line = f"{kind} 9 {rest}"
        elif line.startswith("c=IN IP4 "):
            line = "c=IN IP4 0.0.0.0"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


async def make_offer(
    video: str | None = "sendrecv",
    audio: str | None = None,
    video_codecs: list | None = None,
) -> str:
    """The SDP of an aiortc offer with those sections (a direction or None each); the peer that
    made it is closed again."""
    pc = client_pc()
    try:
        if video is not None:
            source = SyntheticVideo() if video != "recvonly" else "video"
            transceiver = pc.addTransceiver(source, direction=video)
            if video_codecs is not None:
                transceiver.setCodecPreferences(video_codecs)
        if audio is not None:
            pc.addTransceiver(SineAudio() if audio != "recvonly" else "audio", direction=audio)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def h264_baseline():
    """The codec OBS's x264 WHIP output offers: H.264 42e01f, packetization-mode 1."""
    return codec("video", "video/H264", **{"profile-level-id": "42e01f", "packetization-mode": "1"})


@dataclass
class Peer:
    pc: RTCPeerConnection
    collector: Collector
    video: SyntheticVideo | None = None
    session: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        await self.pc.close()
        await self.collector.stop()


async def viewer_offer(keep_images: bool = True) -> tuple[RTCPeerConnection, Collector, str]:
    """A WHEP viewer's peer (recvonly video and audio), its collector and its offer."""
    pc = client_pc()
    collector = Collector(keep_images=keep_images)
    collector.attach(pc)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, collector, pc.localDescription.sdp


async def offer_json(pc: RTCPeerConnection) -> dict[str, str]:
    await pc.setLocalDescription(await pc.createOffer())
    return {"type": "offer", "sdp": pc.localDescription.sdp}


async def open_browser_peer(
    http: aiohttp.ClientSession, video: SyntheticVideo, keep_images: bool = True
) -> Peer:
    """POST /offer like the web page: one sendrecv video section; the 4x video comes back."""
    pc = client_pc()
    collector = Collector(keep_images)
    collector.attach(pc)
    pc.addTransceiver(video, direction="sendrecv")
    peer = Peer(pc, collector, video)
    try:
        async with http.post("/offer", json=await offer_json(pc)) as response:
            body = await response.text()
            assert response.status == 200, (response.status, body)
        answer = json.loads(body)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    except BaseException:
        await peer.close()
        raise
    peer.session = answer["session"]
    peer.extra = answer
    return peer


# --- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    app: web.Application
    url: str
    http: aiohttp.ClientSession
    runner: web.AppRunner

    async def scrape(self) -> list[tuple[str, dict[str, str], float]]:
        async with self.http.get("/metrics") as response:
            assert response.status == 200
            return parse_metrics(await response.text())

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get("/readyz") as response:
            return response.status, await response.json(content_type=None)


def settings_for(server: dict[str, Any] | None = None, engine: dict[str, Any] | None = None):
    """Test settings: bicubic on the CPU, loopback-only ICE, no ICE servers."""
    return load_settings(
        env={},
        overrides={
            "engine": {"kind": "bicubic", "device": "cpu", **(engine or {})},
            "server": {"host": LOOPBACK, "ice_host_addresses": [LOOPBACK], **(server or {})},
        },
    )


@contextlib.asynccontextmanager
async def running_server(
    engine=None,
    server: dict[str, Any] | None = None,
    engine_settings: dict[str, Any] | None = None,
    wait_ready: float | None = 30.0,
) -> AsyncIterator[Server]:
    """The app on 127.0.0.1 at a free port; ``engine`` (an engine object) skips loading one.
    Waits until /readyz is 200 unless ``wait_ready`` is None."""
    settings = settings_for(server, engine_settings)
    choice = EngineChoice(engine, "given by the test") if engine is not None else None
    app = create_app(settings, choice=choice)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://{LOOPBACK}:{port}"
        async with aiohttp.ClientSession(base_url=url) as http:
            srv = Server(app, url, http, runner)
            if wait_ready is not None:
                await wait_until(lambda: _is_ready(srv), wait_ready, "the server to be ready")
            yield srv
    finally:
        await runner.cleanup()


async def _is_ready(server: Server) -> bool:
    status, _ = await server.readyz()
    return status == 200


async def wait_until(check, timeout: float, what: str, interval: float = 0.05):
    """Poll the async ``check`` until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# --- metrics -------------------------------------------------------------------------------------


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(samples, name: str, **labels: str) -> float:
    """The one sample of that name with (at least) those labels."""
    found = [
        v for n, lbl, v in samples if n == name and all(lbl.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def histogram_quantile(samples, name: str, q: float, **labels: str) -> float:
    """Quantile ``q`` of a histogram as PromQL computes it (see ``bucket_quantile``)."""
    buckets = [
        (float(lbl["le"]), v)
        for n, lbl, v in samples
        if n == f"{name}_bucket" and all(lbl.get(k) == x for k, x in labels.items())
    ]
    quantile = bucket_quantile(buckets, q)
    assert quantile is not None, f"{name} has no observations"
    return quantile


def histogram_mean(samples, name: str, **labels: str) -> float:
    count = value(samples, f"{name}_count", **labels)
    assert count > 0, f"{name}{labels} has no observations"
    return value(samples, f"{name}_sum", **labels) / count


async def problem_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """Assert that a response is an RFC 9457 problem and return its body."""
    assert response.content_type == PROBLEM, (response.status, response.content_type)
    body = json.loads(await response.text())
    assert body["status"] == response.status, body
    assert body.get("title"), body
    return body
