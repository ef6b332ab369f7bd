"""Egress end to end on 127.0.0.1: a WHIP stream's upscaled video and its audio recorded to
fragmented MP4 (also by a server that is SIGKILLed), forwarded by RTMP to a real ingest (Debian's
nginx with its RTMP module; by RTMPS through a TLS terminator in front of it) and by WHIP to a
second server (through a front door that redirects), and targets that fail without disturbing
the stream."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCSessionDescription
from support.certificates import self_signed_certificate
from support.webrtc import (
    LOOPBACK,
    SineAudio,
    SyntheticVideo,
    client_pc,
    h264_baseline,
    identify,
    parse_metrics,
    pattern,
    problem_of,
    running_server,
    value,
    viewer_offer,
    wait_until,
)

from streamvsr.config import ConfigError, load_settings
from streamvsr.engine import BicubicEngine
from streamvsr.server import egress
from streamvsr.server.access import hash_token
from streamvsr.server.egress import rtmp
from streamvsr.server.egress.targets import redact
from streamvsr.server.egress.whip import Endpoint
from streamvsr.server.http import RUNTIME
from streamvsr.server.metrics import Metrics
from streamvsr.server.publisher import Publisher

SDP = "application/sdp"
ADMIN_TOKEN = "egress-admin-token"
SCALE = 4
LR = (64, 48)  # SyntheticVideo's frame size
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
RTMP_MODULES = (
    Path("/usr/lib/nginx/modules/ngx_rtmp_module.so"),
    Path("/usr/share/nginx/modules/ngx_rtmp_module.so"),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


async def publish(http: aiohttp.ClientSession, video, audio, stream: str = "cam"):
    """A WHIP publisher of ``stream`` with H.264 video and Opus audio; returns its peer and its
    session URL."""
    pc = client_pc()
    pc.addTransceiver(video, direction="sendonly").setCodecPreferences([h264_baseline()])
    pc.addTransceiver(audio, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with http.post(
            f"/whip/{stream}", data=pc.localDescription.sdp, headers={"Content-Type": SDP}
        ) as response:
            answer = await response.text()
            assert response.status == 201, answer
            location = response.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    except BaseException:
        await pc.close()
        raise
    return pc, location


async def view(http: aiohttp.ClientSession, stream: str = "cam"):
    """A WHEP viewer of ``stream``: its peer and the collector of what it receives."""
    pc, collector, offer = await viewer_offer(keep_images=False)
    try:
        async with http.post(
            f"/whep/{stream}", data=offer, headers={"Content-Type": SDP}
        ) as response:
            answer = await response.text()
            assert response.status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    except BaseException:
        await pc.close()
        raise
    return pc, collector


def egress_count(samples, kind: str, state: str | None = None) -> float:
    return sum(
        v
        for n, labels, v in samples
        if n == "streamvsr_egress_state"
        and labels["kind"] == kind
        and state in (None, labels["state"])
    )


async def wait_for_state(server, kind: str, state: str | None, count: int, timeout: float):
    async def reached() -> bool:
        return egress_count(await server.scrape(), kind, state) == count

    await wait_until(reached, timeout, f"{count} {kind} egresses in state {state}", 0.1)


def decode(path_or_url: str, video_frames: int | None = None, audio_frames: int | None = None,
           timeout: float | None = None):  # fmt: skip
    """The video frames (RGB, pts in seconds) and audio frames (float samples, pts in seconds) of
    a file or stream, up to those counts."""
    video, audio = [], []
    options = {"timeout": timeout} if timeout else {}
    with av.open(path_or_url, **options) as container:
        streams = [s for s in container.streams if s.type in ("video", "audio")]
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    video.append((float(frame.time), frame.to_ndarray(format="rgb24")))
                else:
                    audio.append((float(frame.time), frame.to_ndarray().astype(np.float32)))
            if (
                video_frames is not None
                and len(video) >= video_frames
                and len(audio) >= (audio_frames or 0)
            ):
                break
    return video, audio


def check_media(video, audio, sent: SyntheticVideo | None = None) -> None:
    """4x frames of what was sent, increasing timestamps, and the 440 Hz tone."""
    assert {frame.shape for _, frame in video} == {(LR[1] * SCALE, LR[0] * SCALE, 3)}
    times = [t for t, _ in video]
    assert all(b > a for a, b in itertools.pairwise(times)), times
    if sent is not None:
        differences = [identify(frame, sent)[1] for _, frame in video[-10:]]
        assert max(differences) < 15, differences
    assert audio, "no audio"
    audio_times = [t for t, _ in audio]
    assert all(b > a for a, b in itertools.pairwise(audio_times))
    samples = np.concatenate([a[0] for _, a in audio[5:]])  # AAC: planar float, left channel
    assert np.abs(samples).max() > 0.1, "the audio is silent"
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 48000 / len(samples) - 440) < 10


# --- recording -----------------------------------------------------------------------------------


async def test_recording_of_a_whip_stream(tmp_path: Path) -> None:
    video, audio = SyntheticVideo(), SineAudio(frequency=440)
    settings = {"record_dir": str(tmp_path), "record_streams": ["cam", "other*"]}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        http = server.http
        pc, location = await publish(http, video, audio)
        try:
            await wait_for_state(server, "record", "running", 1, 15)
            async with http.get("/api/streams/cam/egress") as response:
                [listed] = await response.json()
                assert response.status == 200
            assert listed["kind"] == "record" and listed["audio"] is True
            assert re.fullmatch(r"cam-\d{8}T\d{6}Z\.mp4", Path(listed["file"]).name), listed
            async with http.post("/api/streams/cam/record") as response:
                assert response.status == 200  # recorded already
            await asyncio.sleep(4)
            async with http.delete(location) as response:
                assert response.status == 200
            # The trailer is written (the last fragment) when the publisher goes.
            await wait_for_state(server, "record", None, 0, 10)
            samples = await server.scrape()
            assert value(samples, "streamvsr_egress_frames_total", kind="record") >= 30
            assert value(samples, "streamvsr_egress_failures_total", kind="record") == 0
        finally:
            await pc.close()
    [path] = tmp_path.glob("cam-*.mp4")
    assert str(path) == listed["file"]
    frames, sound = decode(str(path))
    assert len(frames) >= 30, len(frames)
    check_media(frames, sound, video)
    # In sync: audio and video start and end together (to within the jitter buffers).
    assert abs(frames[0][0] - sound[0][0]) < 0.3, (frames[0][0], sound[0][0])
    assert abs(frames[-1][0] - sound[-1][0]) < 0.5, (frames[-1][0], sound[-1][0])


async def test_recording_api(tmp_path: Path) -> None:
    video, audio = SyntheticVideo(), SineAudio()
    users = [
        {"name": "any", "permissions": ["publish", "read", "metrics"]},
        {"name": "admin", "token": hash_token(ADMIN_TOKEN), "permissions": ["api"]},
    ]
    settings = {"record_dir": str(tmp_path / "recordings"), "users": users}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        http = server.http
        async with http.post("/api/streams/cam/record", headers=admin) as response:
            assert response.status == 404  # not live
            await problem_of(response)
        pc, _ = await publish(http, video, audio)
        try:
            async with http.post("/api/streams/cam/record") as response:
                assert response.status == 401  # the api permission is needed
                await problem_of(response)
            async with http.delete("/api/streams/cam/record", headers=admin) as response:
                assert response.status == 404  # not recorded
                await problem_of(response)
            async with http.post("/api/streams/cam/record", headers=admin) as response:
                assert response.status == 201
                started = await response.json()
            await wait_for_state(server, "record", "running", 1, 15)
            await asyncio.sleep(1.5)
            async with http.delete("/api/streams/cam/record", headers=admin) as response:
                assert response.status == 200
                stopped = await response.json()
            assert stopped["file"] == started["file"] and stopped["frames"] > 0
            assert egress_count(await server.scrape(), "record") == 0
            frames, sound = decode(stopped["file"])  # finished: the answer waited for it
            assert len(frames) >= 10 and sound
        finally:
            await pc.close()


async def test_a_write_error_ends_the_recording_not_the_stream(caplog) -> None:
    """/dev/full: every write fails with ENOSPC, as on a full disk."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is missing")
    metrics = Metrics()
    egress_metrics = egress.EgressMetrics(metrics.registry)
    publisher = Publisher(metrics)
    publisher.publish_audio(SineAudio())
    recording = egress.Recording(
        Path("/dev/full"), "cam", "session", publisher, egress.EncodeConfig(threads=1),
        egress_metrics, new_file=False,
    )  # fmt: skip
    [viewer, _] = publisher.subscribe_frames()
    caplog.set_level(logging.INFO, "streamvsr.server.egress")
    for n in range(60):
        lr = pattern(n)
        hr = np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1)
        for track in publisher.outputs:
            frame = av.VideoFrame.from_ndarray(hr, format="rgb24")
            frame.pts, frame.time_base = 3000 * n, fractions.Fraction(1, 90000)
            track.put(frame, time.monotonic())
        assert (await asyncio.wait_for(viewer.recv(), 1)).width == LR[0] * SCALE
        await asyncio.sleep(1 / 30)
        if recording.state == "failed":
            break
    assert recording.state == "failed" and "No space left" in recording.error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "recording of stream 'cam'" in errors[0].getMessage()
    samples = parse_metrics(_exposition(metrics))
    assert value(samples, "streamvsr_egress_failures_total", kind="record") == 1
    assert value(samples, "streamvsr_egress_state", kind="record", state="failed") == 1
    # The stream goes on for its other subscribers.
    for track in publisher.outputs:
        track.put(av.VideoFrame(256, 192, "rgb24"), time.monotonic())
    assert (await asyncio.wait_for(viewer.recv(), 1)).width == LR[0] * SCALE
    publisher.stop()
    await asyncio.wait_for(recording.task, 10)
    assert value(parse_metrics(_exposition(metrics)), "streamvsr_egress_state",
                 kind="record", state="failed") == 0  # fmt: skip


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


async def test_a_recording_survives_sigkill(tmp_path: Path) -> None:
    """The server process is killed mid-stream: the file plays up to its last fragment."""
    port = _free_port()
    log_path = tmp_path / "server.log"
    folder = tmp_path / "recordings"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamvsr", "serve", "--engine", "bicubic", "--device", "cpu",
             "--host", LOOPBACK, "--port", str(port), "--ice-host-addresses", LOOPBACK,
             "--record-dir", str(folder), "--record-streams", "cam"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    pc = None
    try:
        async with aiohttp.ClientSession(base_url=f"http://{LOOPBACK}:{port}") as http:

            async def ready() -> bool:
                assert server.poll() is None, log_path.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get("/readyz") as response:
                        return response.status == 200
                return False

            await wait_until(ready, 90, "the server to be ready", 0.2)
            video = SyntheticVideo()
            pc, _ = await publish(http, video, SineAudio())

            async def recording() -> bool:
                files = list(folder.glob("cam-*.mp4"))
                return bool(files) and files[0].stat().st_size > 20_000

            await wait_until(recording, 20, "the recording to be written", 0.2)
            await asyncio.sleep(3)  # a few more fragments (a keyframe a second)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        if pc is not None:
            await pc.close()
    [path] = folder.glob("cam-*.mp4")
    frames, sound = decode(str(path))
    assert len(frames) >= 30, (len(frames), log_path.read_text()[-2000:])
    check_media(frames, sound, video)


# --- RTMP ----------------------------------------------------------------------------------------


class Nginx:
    """nginx with the RTMP module on 127.0.0.1:<free port>, which ``restart`` keeps."""

    def __init__(self, folder: Path, module: Path):
        self.folder, self.port = folder, _free_port()
        self.url = f"rtmp://{LOOPBACK}:{self.port}/live"
        self.config = folder / "nginx.conf"
        self.config.write_text(
            f"load_module {module};\n"
            "daemon off;\n"
            "master_process off;\n"
            f"pid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'nginx.log'} info;\n"
            "events { worker_connections 64; }\n"
            f"rtmp {{ server {{ listen {LOOPBACK}:{self.port};\n"
            "  application live { live on; wait_key on; } } }\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.folder / "nginx.log"
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.folder), "-e", str(log), "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            assert self.process.poll() is None, log.read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 1):
                return
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture
def rtmp_ingest(tmp_path: Path):
    module = next((m for m in RTMP_MODULES if m.is_file()), None)
    if not Path(NGINX).is_file() or module is None:
        pytest.skip("nginx with the RTMP module is needed (Debian: nginx libnginx-mod-rtmp)")
    nginx = Nginx(tmp_path, module)
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


async def listed_target(server) -> str:
    """The target of the stream's one forward, as the API shows it."""
    async with server.http.get("/api/streams/cam/egress") as response:
        assert response.status == 200
        [listed] = await response.json()
    return listed["target"]


async def pull_back(url: str, sent: SyntheticVideo, frames: int) -> None:
    """Decode ``frames`` video and audio frames of the stream at ``url`` (in a thread: FFmpeg's
    RTMP blocks) and check them against what was sent."""
    loop = asyncio.get_running_loop()
    video, audio = await asyncio.wait_for(
        loop.run_in_executor(None, decode, url, frames, frames, 10), 30
    )
    check_media(video, audio, sent)


async def test_rtmp_forward_to_nginx(rtmp_ingest: Nginx) -> None:
    url = f"{rtmp_ingest.url}/secret-key"
    video, audio = SyntheticVideo(), SineAudio(frequency=440)
    settings = {"forward": {"cam": [url]}}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        http = server.http
        pc, location = await publish(http, video, audio)
        try:
            await wait_for_state(server, "rtmp", "running", 1, 20)
            assert await listed_target(server) == f"{rtmp_ingest.url}/***"  # the key is not shown
            await pull_back(url, video, 20)

            # The ingest goes away and comes back: the forward reconnects.
            rtmp_ingest.stop()
            await wait_for_state(server, "rtmp", "retrying", 1, 15)
            rtmp_ingest.start()
            await wait_for_state(server, "rtmp", "running", 1, 15)
            await pull_back(url, video, 10)

            async with http.delete(location) as response:
                assert response.status == 200
            await wait_for_state(server, "rtmp", None, 0, 10)
            samples = await server.scrape()
            assert value(samples, "streamvsr_egress_failures_total", kind="rtmp") >= 1
        finally:
            await pc.close()


class TlsTerminator:
    """TLS on 127.0.0.1:<free port> (a self-signed certificate), each connection relayed to plain
    TCP on 127.0.0.1:``upstream`` until either side closes: RTMPS in front of nginx, whose RTMP
    module has no TLS. Counts the connections that completed the handshake and the bytes relayed
    each way."""

    def __init__(self, folder: Path, upstream: int):
        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*self_signed_certificate(folder))
        self.accepted = 0
        self.relayed = {"to ingest": 0, "to client": 0}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task] = set()

    async def __aenter__(self) -> TlsTerminator:
        self._server = await asyncio.start_server(self._relay, LOOPBACK, 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._relays:
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        self._relays.add(task := asyncio.current_task())
        if to_client.get_extra_info("ssl_object") is not None:  # the handshake is done
            self.accepted += 1
        to_ingest = None
        try:
            ingest, to_ingest = await asyncio.open_connection(LOOPBACK, self.upstream)
            await asyncio.gather(
                self._pipe(client, to_ingest, "to ingest"),
                self._pipe(ingest, to_client, "to client"),
            )
        except OSError:
            pass
        finally:
            for writer in (to_client, to_ingest):
                if writer is not None:
                    writer.close()
            self._relays.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                self.relayed[direction] += len(data)
                writer.write(data)
                await writer.drain()
        except OSError:  # a reset, or TLS ended without its close_notify
            pass
        finally:
            writer.close()  # the other pipe reads its end of file


async def test_rtmps_forward_through_tls(rtmp_ingest: Nginx, tmp_path: Path) -> None:
    """An rtmps:// target (FFmpeg's TLS: gnutls in PyAV's wheels, no certificate check by
    default) through a TLS terminator in front of nginx; pulled back from nginx by plain RTMP."""
    video, audio = SyntheticVideo(), SineAudio(frequency=440)
    async with TlsTerminator(tmp_path, rtmp_ingest.port) as tls:
        front = f"rtmps://{LOOPBACK}:{tls.port}/live"
        settings = {"forward": {"cam": [f"{front}/secret-key"]}}
        async with running_server(BicubicEngine("cpu"), server=settings) as server:
            pc, _ = await publish(server.http, video, audio)
            try:
                await wait_for_state(server, "rtmp", "running", 1, 20)
                assert await listed_target(server) == f"{front}/***"  # the key is not shown
                await pull_back(f"{rtmp_ingest.url}/secret-key", video, 20)
                assert tls.accepted >= 1
                assert tls.relayed["to ingest"] > 20_000, tls.relayed  # media, not just handshakes
                assert tls.relayed["to client"] > 0, tls.relayed
            finally:
                await pc.close()


async def test_bad_forward_targets_leave_the_stream_alone(caplog) -> None:
    dead = f"rtmp://{LOOPBACK}:{_free_port()}/live/secret-key"  # nothing listens there
    caplog.set_level(logging.INFO, "streamvsr.server.egress")
    async with running_server(BicubicEngine("cpu"), server={"forward": {"cam": [dead]}}) as server:
        http = server.http
        async with http.post("/api/streams/cam/forward", json={"url": dead}) as response:
            assert response.status == 404  # not live
            await problem_of(response)
        pc, location = await publish(http, SyntheticVideo(), SineAudio())
        try:
            await wait_for_state(server, "rtmp", "retrying", 1, 15)
            for body in ({"url": "srt://127.0.0.1:9000"}, {"url": "rtmp://"}, {"u": 1}):
                async with http.post("/api/streams/cam/forward", json=body) as response:
                    assert response.status == 400, body
                    problem = await problem_of(response)
            assert "rtmp://" in problem["detail"]
            async with http.post(
                "/api/streams/cam/forward", data="not json", headers={"Content-Type": "text/plain"}
            ) as response:
                assert response.status == 400
            async with http.post("/api/streams/cam/forward", json={"url": dead}) as response:
                assert response.status == 200  # forwarded there already (retrying)
                assert (await response.json())["state"] == "retrying"

            # The stream goes on: frames come in and go out to a viewer, the session stays.
            viewer, collector = await view(http)
            try:
                await collector.wait_video(1, 15)
                before = await server.scrape()
                await collector.wait_video(len(collector.video) + 10, 5)
                after = await server.scrape()
            finally:
                await viewer.close()
                await collector.stop()
            name = "streamvsr_frames_received_total"
            assert value(after, name) >= value(before, name) + 5, name
            status, ready = await server.readyz()
            assert status == 200 and ready["sessions"] == 2
            assert value(after, "streamvsr_egress_failures_total", kind="rtmp") >= 1

            async with http.delete(
                "/api/streams/cam/forward", data=json.dumps({"url": dead})
            ) as response:
                assert response.status == 200
            assert egress_count(await server.scrape(), "rtmp") == 0
            async with http.delete("/api/streams/cam/forward") as response:
                assert response.status == 404
            async with http.delete(location) as response:
                assert response.status == 200
        finally:
            await pc.close()
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries and "RTMP forward of stream 'cam'" in retries[0], retries
    assert "secret-key" not in caplog.text  # the stream key stays out of the logs


async def test_a_silent_rtmp_target_is_dropped_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A target that accepts the connection and never answers the RTMP handshake (FFmpeg has no
    timeout for it, and holds the GIL meanwhile: the pusher process takes that): the forward
    is dropped and retried, the server and the stream go on, and it ends with the stream."""
    monkeypatch.setattr(rtmp, "HANDSHAKE_TIMEOUT_S", 1.0)
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, LOOPBACK, 0)
    port = silent.sockets[0].getsockname()[1]
    url = f"rtmp://{LOOPBACK}:{port}/live/key"
    caplog.set_level(logging.INFO, "streamvsr.server.egress")
    try:
        settings = {"forward": {"cam": [url]}}
        async with running_server(BicubicEngine("cpu"), server=settings) as server:
            pc, location = await publish(server.http, SyntheticVideo(), SineAudio())
            try:
                await wait_for_state(server, "rtmp", "retrying", 1, 20)
                before = await server.scrape()
                await asyncio.sleep(1)
                after = await server.scrape()
                name = "streamvsr_frames_received_total"
                assert value(after, name) > value(before, name) + 10
                async with server.http.delete(location) as response:
                    assert response.status == 200
                await wait_for_state(server, "rtmp", None, 0, 5)
            finally:
                await pc.close()
        assert "no RTMP answer within 1 s; retrying in 1 s" in caplog.text
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


def test_forward_setting_needs_rtmp_or_whip_urls() -> None:
    for bad in ({"cam": ["ftp://example.org/live/key"]}, {"cam": "srt://host:9000"}, ["x"],
                {"cam": ["https:///whip"]}, {"cam": ["rtmp://host"]}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"server\.forward"):
            load_settings(env={}, overrides={"server": {"forward": bad}})
    text = "{cam: [rtmps://a.example/app/key, 'https://:t@b.example/whip/cam?x=1']}"
    settings = load_settings(env={}, overrides={"server": {"forward": text}})
    assert dict(settings.server.forward) == {
        "cam": ("rtmps://a.example/app/key", "https://:t@b.example/whip/cam?x=1")
    }


# --- WHIP ----------------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[str]:
    """``handler`` answering every request on 127.0.0.1 at a free port; yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, 0).start()
        yield f"http://{LOOPBACK}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def sessions_of(server) -> int:
    status, ready = await server.readyz()
    assert status == 200, ready
    return ready["sessions"]


async def wait_for_sessions(server, count: int, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := await sessions_of(server)) != count:
        assert asyncio.get_running_loop().time() < deadline, f"{found} sessions, not {count}"
        await asyncio.sleep(0.1)


async def forwards(server) -> list[dict]:
    async with server.http.get("/api/streams/cam/egress") as response:
        assert response.status == 200
        return [e for e in await response.json() if e["kind"] == "whip"]


async def test_whip_forward_to_another_server_through_a_redirect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A's stream reaches B (4x of 4x: 16x the size sent, with its audio); the forward follows
    the front door's 307 and sends its DELETE to B's session, which ends as soon as A's
    publisher goes, or as the API stops a forward."""
    seen: list[tuple[str, str]] = []  # what reached the front door
    deleted: list[str] = []
    delete = Endpoint.delete

    async def noted_delete(self: Endpoint, http, session, name: str) -> None:
        deleted.append(str(session))
        await delete(self, http, session, name)

    monkeypatch.setattr(Endpoint, "delete", noted_delete)
    async with running_server(BicubicEngine("cpu")) as b:

        async def redirect(request: web.Request) -> web.Response:
            seen.append((request.method, request.path))
            raise web.HTTPTemporaryRedirect(b.url + request.path_qs)

        async with http_server(redirect) as front:
            settings = {"forward": {"cam": [f"{front}/whip/relay"]}}
            async with running_server(BicubicEngine("cpu"), server=settings) as a:
                pc, location = await publish(a.http, SyntheticVideo(), SineAudio(frequency=440))
                try:
                    await wait_for_state(a, "whip", "running", 1, 15)
                    [listed] = await forwards(a)
                    assert listed["target"] == f"{front}/***" and listed["audio"] is True
                    viewer, collector = await view(b.http, "relay")
                    try:
                        await collector.wait_video(3, 15)
                        await collector.wait_audio(10, 10)
                    finally:
                        await viewer.close()
                        await collector.stop()
                    size = (LR[0] * SCALE * SCALE, LR[1] * SCALE * SCALE)
                    assert {(f.width, f.height) for f in collector.video} == {size}
                    [listed] = await forwards(a)
                    assert listed["frames"] >= 3  # frames its sender took
                    samples = await a.scrape()
                    assert value(samples, "streamvsr_egress_frames_total", kind="whip") >= 3

                    # B drops the session: the forward reconnects (through the front door).
                    registry = b.app[RUNTIME].registry
                    await registry.close(registry.source_of("relay"), "dropped by the test")
                    await wait_for_state(a, "whip", "retrying", 1, 10)
                    await wait_for_state(a, "whip", "running", 1, 10)
                    assert registry.source_of("relay") is not None
                    [listed] = await forwards(a)
                    assert listed["error"] == "the target closed the connection", listed

                    # Started and stopped by the API: B's session ends at once (the DELETE).
                    body = {"url": f"{b.url}/whip/copy"}
                    async with a.http.post("/api/streams/cam/forward", json=body) as response:
                        assert response.status == 201, await response.text()
                        assert (await response.json())["kind"] == "whip"
                    await wait_for_state(a, "whip", "running", 2, 15)
                    assert await sessions_of(b) == 2
                    async with a.http.delete(
                        "/api/streams/cam/forward", data=json.dumps(body)
                    ) as response:
                        assert response.status == 200
                    await wait_for_sessions(b, 1, 3)

                    # A's publisher goes: so does B's stream.
                    async with a.http.delete(location) as response:
                        assert response.status == 200
                    await wait_for_sessions(b, 0, 5)
                    await wait_for_state(a, "whip", None, 0, 5)
                    samples = await a.scrape()
                    assert value(samples, "streamvsr_egress_failures_total", kind="whip") == 1
                finally:
                    await pc.close()
    assert seen == [("POST", "/whip/relay")] * 2
    # To B's session URLs, as B's Locations said (relative: resolved against B's URL).
    relay, copy = f"{b.url}/whip/relay", f"{b.url}/whip/copy"
    assert [url.rpartition("/")[0] for url in deleted] == [relay, copy, relay]


async def test_bad_whip_targets_leave_the_stream_alone(caplog) -> None:
    """A target that is not there, one that refuses (403 with a problem, 401 in plain text), one
    that answers an unusable SDP and a busy one (503, Retry-After): each retries (the busy one
    when it asked) with its error in the API, without showing the URL's secrets, while A's
    viewers get the stream."""
    caplog.set_level(logging.INFO, "streamvsr.server")
    heard: dict[str, list[tuple[str | None, str]]] = {}

    async def target(request: web.Request) -> web.Response:
        heard.setdefault(request.path, []).append(
            (request.headers.get("Authorization"), request.query_string)
        )
        if request.path == "/forbidden":
            problem = {"type": "about:blank", "title": "Forbidden", "detail": "bad key"}
            return web.json_response(problem, status=403, content_type="application/problem+json")
        if request.path == "/unauthorized":
            return web.Response(status=401, text="token needed\nmore")
        if request.path == "/busy":
            return web.Response(status=503, headers={"Retry-After": "7"})
        return web.Response(status=201, text="v=0 nonsense", headers={"Location": "/s/1"})

    async with http_server(target) as fake:
        async with http_server(target) as gone:
            pass  # its port is free again: nothing listens there
        urls = [
            f"{gone}/whip/cam",
            fake.replace("//", "//user:s3cret@") + "/forbidden?key=k3y",
            fake.replace("//", "//:t0ken@") + "/unauthorized",
            f"{fake}/answer",
            f"{fake}/busy",
        ]
        async with running_server(BicubicEngine("cpu"), server={"forward": {"cam": urls}}) as a:
            http = a.http
            pc, location = await publish(http, SyntheticVideo(), SineAudio())
            try:
                await wait_for_state(a, "whip", "retrying", 5, 15)
                errors = {e["target"]: e["error"] for e in await forwards(a)}
                assert len(errors) == 2, errors  # the fake's three look alike: hidden paths
                assert "Connection refused" in errors[f"{gone}/***"], errors
                found = {e["error"] for e in await forwards(a)}
                assert any("403 Forbidden: Forbidden - bad key" in e for e in found), found
                assert any("401 Unauthorized: token needed" in e for e in found), found
                assert any("unusable SDP answer" in e for e in found), found
                assert any("503 Service Unavailable" in e for e in found), found
                assert "Service Unavailable; retrying in 7 s" in caplog.text  # its Retry-After
                assert heard["/forbidden"][0] == ("Basic dXNlcjpzM2NyZXQ=", "key=k3y")
                assert heard["/unauthorized"][0] == ("Bearer t0ken", "")

                for bad, why in (
                    ("ftp://127.0.0.1/x", "https:// (WHIP) URL, not ftp://"),
                    ("http:///whip", "needs a host"),
                    ("https://127.0.0.1:99999/", "port"),
                ):
                    async with http.post("/api/streams/cam/forward", json={"url": bad}) as response:
                        assert response.status == 400, bad
                        assert why in (await problem_of(response))["detail"], bad

                # A's viewers get the stream all along.
                viewer, collector = await view(http)
                try:
                    await collector.wait_video(10, 15)
                finally:
                    await viewer.close()
                    await collector.stop()
                samples = await a.scrape()
                assert value(samples, "streamvsr_egress_failures_total", kind="whip") >= 5
                async with http.delete(location) as response:
                    assert response.status == 200
                await wait_for_state(a, "whip", None, 0, 10)
            finally:
                await pc.close()
    for secret in ("s3cret", "k3y", "t0ken"):
        assert secret not in caplog.text, secret


def test_whip_urls_show_no_secrets_and_carry_credentials() -> None:
    assert redact("https://u:p@h.example:8443/whip/cam?key=k") == "https://h.example:8443/***"
    assert redact("http://[::1]/") == "http://[::1]/"
    bearer = Endpoint("https://:tok%2F@h.example/whip?key=value")
    assert bearer._headers == {"Authorization": "Bearer tok/"}
    assert str(bearer.url) == "https://h.example/whip?key=value"
    assert bearer.hide_secrets("no https://h.example/whip?key=value") == (
        "no https://h.example/whip?***"
    )
    assert Endpoint("http://h.example/whip")._headers == {}
    assert Endpoint("http://me@h.example/whip")._headers == {"Authorization": "Basic bWU6"}


async def test_whip_session_url_resolves_against_the_final_url() -> None:
    """Relative redirects and a relative Location, resolved step by step."""
    answers = {
        "/a": (307, "b?x=1"),  # relative to /a: /b?x=1
        "/b": (308, "/c/"),
        "/c/": (201, "session/9"),  # relative to /c/: /c/session/9
    }

    async def target(request: web.Request) -> web.Response:
        status, location = answers[request.path]
        return web.Response(status=status, text="v=0\r\n", headers={"Location": location})

    async with http_server(target) as url, aiohttp.ClientSession() as http:
        session, answer = await Endpoint(f"{url}/a").offer(http, "v=0\r\n")
    assert str(session) == f"{url}/c/session/9" and answer == "v=0\r\n"
