"""Egress end to end on 127.0.0.1: a WHIP stream's upscaled video and its audio recorded to
fragmented MP4 (also by a server that is SIGKILLed) and forwarded by RTMP to a real ingest
(Debian's nginx with its RTMP module), and targets that fail without disturbing the stream."""

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
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCSessionDescription
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
    wait_until,
)

from streamvsr.config import ConfigError, load_settings
from streamvsr.engine import BicubicEngine
from streamvsr.server import egress
from streamvsr.server.access import hash_token
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


async def test_rtmp_forward_to_nginx(rtmp_ingest: Nginx) -> None:
    url = f"{rtmp_ingest.url}/secret-key"
    video, audio = SyntheticVideo(), SineAudio(frequency=440)
    settings = {"forward": {"cam": [url]}}
    loop = asyncio.get_running_loop()
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        http = server.http
        pc, location = await publish(http, video, audio)
        try:
            await wait_for_state(server, "rtmp", "running", 1, 20)
            async with http.get("/api/streams/cam/egress") as response:
                [listed] = await response.json()
            assert listed["target"] == f"{rtmp_ingest.url}/***", listed  # the key is not shown
            frames, sound = await asyncio.wait_for(
                loop.run_in_executor(None, decode, url, 20, 20, 10), 30
            )
            check_media(frames, sound, video)

            # The ingest goes away and comes back: the forward reconnects.
            rtmp_ingest.stop()
            await wait_for_state(server, "rtmp", "retrying", 1, 15)
            rtmp_ingest.start()
            await wait_for_state(server, "rtmp", "running", 1, 15)
            frames, sound = await asyncio.wait_for(
                loop.run_in_executor(None, decode, url, 10, 10, 10), 30
            )
            check_media(frames, sound, video)

            async with http.delete(location) as response:
                assert response.status == 200
            await wait_for_state(server, "rtmp", None, 0, 10)
            samples = await server.scrape()
            assert value(samples, "streamvsr_egress_failures_total", kind="rtmp") >= 1
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
            for body in ({"url": "http://example.org/live/key"}, {"url": "rtmp://"}, {"u": 1}):
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

            # The stream goes on: frames come in and go out, the session stays.
            before = await server.scrape()
            await asyncio.sleep(1.5)
            after = await server.scrape()
            for name in ("streamvsr_frames_received_total", "streamvsr_frames_sent_total"):
                assert value(after, name) > value(before, name) + 10, name
            status, ready = await server.readyz()
            assert status == 200 and ready["sessions"] == 1
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
    monkeypatch.setattr(egress, "HANDSHAKE_TIMEOUT_S", 1.0)
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


def test_forward_setting_needs_rtmp_urls() -> None:
    for bad in ({"cam": ["http://example.org/live/key"]}, {"cam": "srt://host:9000"}, ["x"]):
        with pytest.raises(ConfigError, match=r"server\.forward"):
            load_settings(env={}, overrides={"server": {"forward": bad}})
    settings = load_settings(
        env={}, overrides={"server": {"forward": "{cam: [rtmps://a.example/app/key]}"}}
    )
    assert dict(settings.server.forward) == {"cam": ("rtmps://a.example/app/key",)}
