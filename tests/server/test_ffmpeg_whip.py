"""FFmpeg's WHIP muxer (through PyAV, in a child process: PyAV holds the GIL while the muxer
talks HTTP to this process's server) publishing to /whip/{stream} on 127.0.0.1.

FFmpeg 8's muxer answers no ICE consent checks once it streams, so streaming over 60 s proves that
its media counts as consent; without a certificate it makes a P-224 one, which OpenSSL refuses,
and the server must say so."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from pathlib import Path

import aioice.ice
import av
import pytest
from support.certificates import self_signed_certificate
from support.webrtc import running_server, value, wait_until

from streamvsr.engine import BicubicEngine
from streamvsr.server import consent

pytestmark = pytest.mark.skipif(
    "whip" not in av.formats_available, reason="this PyAV's FFmpeg has no whip muxer"
)

# argv: URL, seconds, then cert_file and key_file or nothing. 64x48 H.264 baseline at 30 fps.
PUBLISHER = """
import sys, time
import av, numpy as np
url, seconds, files = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
options = dict(zip(("cert_file", "key_file"), files))
out = av.open(url, mode="w", format="whip", options=options)
video = out.add_stream("libx264", rate=30, options={
    "profile": "baseline", "preset": "ultrafast", "tune": "zerolatency", "g": "30", "bf": "0"})
video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 3 * n % 256, np.uint8), format="rgb24")
    frame.pts = n
    for packet in video.encode(frame):
        out.mux(packet)
    n += 1
    time.sleep(max(0.0, start + n / 30 - time.monotonic()))
out.close()
"""


@contextlib.asynccontextmanager
async def ffmpeg_publisher(url: str, seconds: float, files: list[str]):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, url, str(seconds), *files,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def sessions(server) -> int:
    _, ready = await server.readyz()
    return ready["sessions"]


async def frames(server) -> float:
    return value(await server.scrape(), "streamvsr_frames_received_total")


async def test_ffmpeg_streams_for_over_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = 65  # aioice drops a peer after 6 unanswered consent checks, 5 s apart
    forgiven: list[bool] = []  # the verdict on each unanswered consent check
    consents = consent.consents

    def recording(*args) -> bool:
        forgiven.append(consents(*args))
        return forgiven[-1]

    monkeypatch.setattr(consent, "consents", recording)
    async with running_server(BicubicEngine("cpu")) as server:
        url = f"{server.url}/whip/cam"
        files = [str(f) for f in self_signed_certificate(tmp_path, "ffmpeg-whip")]
        async with ffmpeg_publisher(url, seconds, files) as publisher:
            await wait_until(lambda: frames(server), 30, "the first frames from FFmpeg")
            started, counts = time.monotonic(), []
            while time.monotonic() - started < seconds - 5:
                assert await sessions(server) == 1, "the publisher was dropped"
                counts.append(await frames(server))
                await asyncio.sleep(5)
            _, errors = await asyncio.wait_for(publisher.communicate(), 30)
            assert publisher.returncode == 0, errors.decode()[-2000:]
        # Frames kept arriving to the end, and the muxer's DELETE closed the session.
        assert all(later > earlier for earlier, later in itertools.pairwise(counts)), counts
        assert await sessions(server) == 0
    # The muxer answered none of the ~12 consent checks: aioice alone would have dropped it.
    assert sum(forgiven) >= aioice.ice.CONSENT_FAILURES, forgiven


async def test_a_refused_certificate_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamvsr.server.ice")

    async def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "DTLS" in r.getMessage()]

    async with (
        running_server(BicubicEngine("cpu")) as server,
        ffmpeg_publisher(f"{server.url}/whip/cam", 10, []),
    ):
        messages = await wait_until(logged, 30, "the DTLS failure in the log")
    assert len(messages) == 1, messages
    assert messages[0].startswith("DTLS handshake with 127.0.0.1:"), messages
    assert messages[0].endswith("failed: wrong curve"), messages
