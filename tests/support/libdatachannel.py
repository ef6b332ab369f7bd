"""OBS Studio's WebRTC stack for the interop tests: libdatachannel (npm ``node-datachannel``,
which carries its prebuilt binary) driven by the tests/support/*.mjs scripts, and the media they
send (H.264 access units and Opus packets, as OBS's encoders make them)."""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from support.node import node_packages
from support.webrtc import pattern

SUPPORT = Path(__file__).resolve().parent
NODE_DATACHANNEL = "node-datachannel@0.33.4"


def libdatachannel() -> dict[str, str]:
    """The environment for the node peers; skips the test where node-datachannel cannot load."""
    env = {**os.environ, "NODE_PATH": str(node_packages(NODE_DATACHANNEL))}
    loaded = subprocess.run(
        ["node", "-e", "require('node-datachannel').getLibraryVersion()"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if loaded.returncode != 0:
        pytest.skip(f"node-datachannel does not load here: {loaded.stderr.strip()[-300:]}")
    return env


async def run_node(env: dict[str, str], script: str, *args: str, timeout: float = 50) -> dict:
    """Run tests/support/``script``; its JSON report (its stderr goes into the failure message)."""
    process = await asyncio.create_subprocess_exec(
        "node", str(SUPPORT / script), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{script} ran longer than {timeout} s") from None
    assert process.returncode == 0, f"{script} exited {process.returncode}:\n{err.decode()[-3000:]}"
    return json.loads(out.decode().strip().splitlines()[-1])


def write_units(path: Path, packets) -> None:
    """Encoded packets, each preceded by its 32-bit big-endian length (what the node peer reads)."""
    with path.open("wb") as out:
        for packet in packets:
            out.write(len(bytes(packet)).to_bytes(4, "big") + bytes(packet))


def encode(codec: av.CodecContext, frames) -> list[av.Packet]:
    packets = [packet for frame in frames for packet in codec.encode(frame)]
    return packets + codec.encode(None)


def h264_clip(path: Path, count: int = 60, size: tuple[int, int] = (320, 180), fps: int = 30):
    """``pattern`` frames as OBS's x264 makes them (Annex-B access units, no B-frames), with a
    keyframe every half second: OBS drops what it encodes before DTLS is up."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height = size
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = fps // 2
    codec.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline"}
    frames = []
    for n in range(count):
        frame = av.VideoFrame.from_ndarray(pattern(n, *size), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = n
        frames.append(frame)
    write_units(path, encode(codec, frames))


def opus_clip(path: Path, seconds: float = 2.0, frequency: float = 440.0) -> None:
    """A stereo sine as 20 ms Opus packets."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 48000, "stereo", "s16"
    frames = []
    for n in range(int(seconds * 50)):
        t = (n * 960 + np.arange(960)) / 48000
        mono = (9000 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), "s16", "stereo")
        frame.sample_rate, frame.pts = 48000, n * 960
        frames.append(frame)
    write_units(path, encode(codec, frames))
