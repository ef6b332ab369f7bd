"""The cluster's Redis side against a real redis-server: placement by free slots, reservations
that never over-fill a node however many front doors race, heartbeats that lapse, draining, and
the stream map."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from support.cluster import redis_server

from streamvsr.server.cluster.command import format_status
from streamvsr.server.cluster.registry import ClusterRegistry

TIMEOUT_S = 1.0


@pytest.fixture
async def registries():
    """Two clients of one Redis (two front doors)."""
    with redis_server() as redis:
        first = ClusterRegistry.from_url(redis.url, "test")
        second = ClusterRegistry.from_url(redis.url, "test")
        try:
            yield first, second
        finally:
            await first.close()
            await second.close()


async def beat(
    registry, node: str, model=(0, 2), viewers=(0, 8), streams=(), timeout_s=TIMEOUT_S
) -> float | None:
    fields = {
        "url": f"http://{node}.test:8080", "model_used": model[0], "model_slots": model[1],
        "viewer_used": viewers[0], "viewer_slots": viewers[1],
    }  # fmt: skip
    return await registry.heartbeat(node, fields, list(streams), timeout_s)


async def test_the_node_with_most_free_slots_is_chosen_and_the_preferred_one_when_it_has_room(
    registries,
) -> None:
    registry, _ = registries
    await beat(registry, "a", model=(1, 2))
    await beat(registry, "b", model=(0, 3))
    node, url, token = await registry.place("", TIMEOUT_S, 10)
    assert (node, url) == ("b", "http://b.test:8080") and token
    assert (await registry.place("a", TIMEOUT_S, 10))[0] == "a"  # preferred, has one free
    # a: 1 used + 1 reserved = full; b: 3 - 1 reserved = 2 free
    assert (await registry.place("a", TIMEOUT_S, 10))[0] == "b"


async def test_racing_front_doors_never_fill_a_node_past_its_slots(registries) -> None:
    first, second = registries
    await beat(first, "a", model=(2, 5))
    places = [
        (first if n % 2 else second).place("", TIMEOUT_S, 10) for n in range(60)
    ]  # fmt: skip
    placed = [p for p in await asyncio.gather(*places) if p is not None]
    assert len(placed) == 3 and len({token for _, _, token in placed}) == 3


async def test_reservations_lapse_or_are_released(registries) -> None:
    registry, _ = registries
    await beat(registry, "a", model=(0, 1))
    _, _, token = await registry.place("", TIMEOUT_S, 0.3)
    assert await registry.place("", TIMEOUT_S, 0.3) is None  # held for the redirected client
    await asyncio.sleep(0.4)
    _, _, token = await registry.place("", TIMEOUT_S, 10)  # the first one lapsed
    assert await registry.release("a", token) is True
    assert await registry.release("a", token) is False
    assert await registry.place("", TIMEOUT_S, 10) is not None


async def test_silent_and_draining_nodes_get_no_sessions(registries) -> None:
    registry, _ = registries
    await beat(registry, "a")
    await beat(registry, "b")
    assert await registry.drain("a", grace_s=30)
    assert await registry.drain("nobody", grace_s=30) is False
    assert await beat(registry, "a") is not None  # the heartbeat tells a it drains
    assert {(await registry.place("", TIMEOUT_S, 10))[0] for _ in range(2)} == {"b"}
    await asyncio.sleep(TIMEOUT_S + 0.2)  # b stops beating
    assert await registry.place("", TIMEOUT_S, 10) is None
    await registry.undrain("a")
    await beat(registry, "a")
    assert (await registry.place("", TIMEOUT_S, 10))[0] == "a"


async def test_stream_map_follows_heartbeats(registries) -> None:
    registry, _ = registries
    await beat(registry, "a", streams=["live"])
    assert await registry.stream_node("live", TIMEOUT_S) == ("a", "http://a.test:8080")
    assert await registry.host("b", "live", TIMEOUT_S) is False  # a publishes it
    assert await registry.host("a", "live", TIMEOUT_S) is True
    await registry.unhost("b", "live")  # not b's: kept
    assert await registry.streams() == {"live": "a"}
    status = format_status(await registry.nodes(), await registry.streams(), TIMEOUT_S)
    assert "a " in status and "live -> a" in status and "0/2" in status
    await asyncio.sleep(TIMEOUT_S + 0.2)  # a died: its stream is forgotten
    assert await registry.stream_node("live", TIMEOUT_S) is None
    await beat(registry, "b", streams=["other"])
    await registry.unhost("b", "other")
    assert "other" not in await registry.streams()


async def test_cluster_status_command_prints_nodes_and_streams(registries) -> None:
    registry, _ = registries
    await beat(registry, "a", model=(1, 2), streams=["live"], timeout_s=120)  # outlives startup
    url = registry.redis.connection_pool.connection_kwargs
    redis_url = f"redis://{url['host']}:{url['port']}/0"
    command = [sys.executable, "-m", "streamvsr", "cluster", "status", "--redis-url", redis_url,
               "--key-prefix", "test"]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "http://a.test:8080" in done.stdout and "1/2" in done.stdout
    assert "live -> a" in done.stdout
