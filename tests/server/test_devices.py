"""Several devices in one process (``engine.devices``): an engine copy and a GPU worker each,
sessions placed on the device with the most free capacity, each session's frames its own, and
metrics, /api/stats and /readyz per device. Two CPU "devices" stand in for two GPUs."""

from __future__ import annotations

import asyncio

import pytest
from support.webrtc import (
    SyntheticVideo,
    decode_index,
    downscale,
    open_browser_peer,
    running_server,
    value,
)

from streamvsr.config import ConfigError, load_settings
from streamvsr.engine import BicubicEngine
from streamvsr.server.devices import DevicePool, device_labels
from streamvsr.server.scheduler import FrameScheduler

TWO_CPUS = {"kind": "bicubic", "devices": ["cpu", "cpu"]}


def test_labels_number_repeated_devices_only() -> None:
    assert device_labels(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert device_labels(["cpu", "cpu"]) == ["cpu#0", "cpu#1"]


def test_devices_setting_is_checked() -> None:
    assert load_settings(overrides={"engine": {"devices": "cuda:0,cuda:1"}}).engine.devices == (
        "cuda:0", "cuda:1",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"engine\.devices"):
        load_settings(overrides={"engine": {"devices": ["gpu0"]}})


async def test_sessions_go_to_the_device_with_the_fewest() -> None:
    loop = asyncio.get_running_loop()
    workers = [FrameScheduler(BicubicEngine("cpu"), loop) for _ in range(2)]
    pool = DevicePool(workers, ["a", "b"])
    for key in ("s1", "s2", "s3"):
        pool.add_source(key, lambda result: None, seed=0)
    assert pool.sessions() == {"a": 2, "b": 1}
    pool.remove_source("s1")
    pool.remove_source("s3")
    assert pool.sessions() == {"a": 0, "b": 1}
    pool.add_source("s4", lambda result: None, seed=0)
    assert pool.device_of("s4") == "a" and pool.sessions() == {"a": 1, "b": 1}


def indices(peer) -> set[int]:
    return {decode_index(downscale(frame.image)) for frame in peer.collector.video}


async def test_two_devices_serve_a_session_each_with_its_own_frames() -> None:
    async with running_server(engine_settings=TWO_CPUS) as server:
        status, ready = await server.readyz()
        assert status == 200 and ready["devices"] == ["cpu#0", "cpu#1"]
        first = await open_browser_peer(server.http, SyntheticVideo(first=0))
        second = await open_browser_peer(server.http, SyntheticVideo(first=128))
        try:
            await asyncio.gather(first.collector.wait_video(10), second.collector.wait_video(10))
            samples = await server.scrape()
            for device in ("cpu#0", "cpu#1"):
                assert value(samples, "streamvsr_device_sessions", device=device) == 1
                assert value(samples, "streamvsr_device_busy_seconds_total", device=device) > 0
            async with server.http.get("/api/stats") as response:
                assert (await response.json())["devices"] == {"cpu#0": 1, "cpu#1": 1}
        finally:
            await first.close()
            await second.close()
    # Each session got back its own frames only (the index is painted into each frame).
    assert indices(first) and max(indices(first)) < 128
    assert indices(second) and min(indices(second)) >= 128
