"""Nodes of a cluster behind one front door: real ``streamvsr serve`` processes sharing a real
Redis on 127.0.0.1. WHIP publishers are spread by free slots (307, followed as OBS does), a WHEP
viewer is sent to the node that publishes its stream, the page's offer is proxied, a full cluster
answers 503, a killed node drops out, a drained node exits, and Redis going away stops no one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiortc import RTCSessionDescription
from support.cluster import cluster_nodes, redis_server
from support.libdatachannel import h264_clip, libdatachannel, opus_clip, run_node
from support.webrtc import (
    SyntheticVideo,
    client_pc,
    h264_baseline,
    offer_json,
    parse_metrics,
    problem_of,
    value,
    viewer_offer,
    wait_until,
)

from streamvsr.server.cluster.command import format_status
from streamvsr.server.cluster.registry import ClusterRegistry

SDP = "application/sdp"
ONE_SLOT = ("--max-sessions", "1")


async def publish(http: aiohttp.ClientSession, url: str):
    """An aiortc WHIP publisher POSTed to ``url`` (redirects followed): (status, final URL,
    Location, peer)."""
    pc = client_pc()
    pc.addTransceiver(SyntheticVideo(), direction="sendonly").setCodecPreferences([h264_baseline()])
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, data=pc.localDescription.sdp, headers={"Content-Type": SDP}) as r:
        body = await r.text()
        if r.status == 201:
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        else:
            await pc.close()
        return r.status, str(r.url), r.headers.get("Location", ""), pc, r.history


async def scrape(http: aiohttp.ClientSession, node) -> list:
    async with http.get(f"{node.url}/metrics") as response:
        return parse_metrics(await response.text())


async def cluster_status(redis_url: str) -> str:
    """What ``streamvsr cluster status`` prints (its command runs in test_registry.py)."""
    registry = ClusterRegistry.from_url(redis_url, "streamvsr")
    try:
        return format_status(await registry.nodes(), await registry.streams(), 1.5)
    finally:
        await registry.close()


async def test_publishers_viewers_and_pages_go_to_the_right_node(tmp_path: Path) -> None:
    peers = []
    with redis_server() as redis, cluster_nodes(redis.url, tmp_path, 3, *ONE_SLOT) as nodes:
        a, b, _ = nodes
        async with aiohttp.ClientSession() as http:
            try:
                # Three publishers at a's door fill the three nodes, one each (307 followed).
                placed = {}
                for stream in ("one", "two", "three"):
                    status, final, location, pc, history = await publish(
                        http, f"{a.url}/whip/{stream}"
                    )
                    assert status == 201, (stream, location)
                    peers.append(pc)
                    node = next(n for n in nodes if final.startswith(n.url))
                    assert location.startswith(f"{node.url}/whip/{stream}/")  # absolute
                    if node is not a:
                        assert [h.status for h in history] == [307]
                    placed[stream] = (node, location)
                assert {n.id for n, _ in placed.values()} == {"a", "b", "c"}
                status = await cluster_status(redis.url)
                assert status.count("1/1") == 3, status
                for stream, (node, _) in placed.items():
                    assert f"{stream} -> {node.id}" in status

                # All full: 503 with Retry-After, from any door; nothing over-filled.
                status_code, *_ = await publish(http, f"{b.url}/whip/four")
                assert status_code == 503
                page = client_pc()
                page.addTransceiver(SyntheticVideo(), direction="sendrecv")
                peers.append(page)
                async with http.post(f"{a.url}/offer", json=await offer_json(page)) as r:
                    assert r.status == 503 and r.headers["Retry-After"]
                    await problem_of(r)

                # A viewer at a's door is sent to the node that publishes "three" and gets 4x.
                publisher_node, _ = placed["three"]
                viewer, collector, offer = await viewer_offer()
                peers.append(viewer)
                async with http.post(
                    f"{a.url}/whep/three", data=offer, headers={"Content-Type": SDP}
                ) as r:
                    assert r.status == 201, await r.text()
                    assert str(r.url).startswith(publisher_node.url)
                    answer = await r.text()
                await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                await collector.wait_video(3, timeout=30)
                assert {(f.width, f.height) for f in collector.video} == {(256, 192)}

                # b's publisher leaves; a page at a's door is proxied to b and streams.
                _, b_location = next(v for v in placed.values() if v[0] is b)
                async with http.delete(b_location) as r:
                    assert r.status == 200
                await _wait_free(http, redis.url)
                async with http.post(f"{a.url}/offer", json=await offer_json(page)) as r:
                    assert r.status == 200, await r.text()
                    answer = await r.json()
                await page.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
                samples = await scrape(http, b)
                assert value(samples, "streamvsr_sessions_active", kind="browser") == 1
                stats_url = f"{a.url}/api/stats?session={answer['session']}"
                async with http.get(stats_url, headers={"X-Forwarded-For": "203.0.113.9"}) as r:
                    assert r.status == 200 and (await r.json())["session_open"] is True
                samples = await scrape(http, a)
                assert value(samples, "streamvsr_cluster_placements_total", placement="proxy") == 1
                assert value(samples, "streamvsr_cluster_connected") == 1
            finally:
                await asyncio.gather(*(pc.close() for pc in peers))


async def _wait_free(http, redis_url: str) -> None:
    async def one_free() -> bool:
        return (await cluster_status(redis_url)).count("0/1") == 1

    await wait_until(one_free, 10, "the cluster to see b's free slot")


async def test_a_killed_node_drops_out_and_a_drained_node_exits(tmp_path: Path) -> None:
    with redis_server() as redis, cluster_nodes(redis.url, tmp_path, 3, *ONE_SLOT) as nodes:
        a, b, c = nodes
        async with aiohttp.ClientSession() as http:
            peers = []
            try:
                status, final, location, pc, _ = await publish(http, f"{c.url}/whip/cam")
                peers.append(pc)
                assert status == 201 and final.startswith(c.url)
                c.kill()
                await asyncio.sleep(2.0)  # past node_timeout_s (1.5 s)
                status = await cluster_status(redis.url)
                assert "silent" in status and "cam -> c" not in status, status
                viewer, _, offer = await viewer_offer()
                peers.append(viewer)
                async with http.post(
                    f"{a.url}/whep/cam", data=offer, headers={"Content-Type": SDP}
                ) as r:
                    assert r.status == 409  # the stream died with its node

                # Drain b: new sessions go to a; b exits once its own session has ended.
                status, final, location, pc, _ = await publish(http, f"{b.url}/whip/live")
                peers.append(pc)
                assert final.startswith(b.url)
                command = [
                    sys.executable,
                    "-m",
                    "streamvsr",
                    "drain",
                    "b",
                    "--redis-url",
                    redis.url,
                ]
                drain = await asyncio.to_thread(  # the event loop keeps the peers going
                    subprocess.run, command, capture_output=True, text=True, timeout=60
                )
                assert drain.returncode == 0, drain.stderr

                async def draining() -> bool:
                    async with http.get(f"{b.url}/readyz") as r:
                        return r.status == 503 and (await r.json())["title"] == "Draining"

                await wait_until(draining, 5, "b to drain")
                status, final, *_ = await publish(http, f"{b.url}/whip/other")
                assert status == 201 and final.startswith(a.url), final
                assert b.process.poll() is None  # still serving its publisher
                async with http.delete(location) as r:
                    assert r.status == 200
                await asyncio.to_thread(b.process.wait, 15)
                assert b.process.returncode == 0, b.output()
            finally:
                await asyncio.gather(*(pc.close() for pc in peers))


async def test_without_redis_a_node_serves_its_own_sessions(tmp_path: Path) -> None:
    with redis_server() as redis, cluster_nodes(redis.url, tmp_path, 1) as [node]:
        async with aiohttp.ClientSession() as http:
            peers = []
            try:
                status, *_, pc, _ = await publish(http, f"{node.url}/whip/before")
                peers.append(pc)
                assert status == 201
                redis.stop()

                async def disconnected() -> bool:
                    return value(await scrape(http, node), "streamvsr_cluster_connected") == 0

                await wait_until(disconnected, 10, "the node to notice that Redis is gone")
                received = value(await scrape(http, node), "streamvsr_frames_received_total")
                status, *_, pc, _ = await publish(http, f"{node.url}/whip/after")
                peers.append(pc)
                assert status == 201
                async with http.get(f"{node.url}/readyz") as r:
                    ready = await r.json()
                    assert r.status == 200 and ready["cluster"]["redis"] == "unreachable"

                async def streaming() -> bool:
                    now = value(await scrape(http, node), "streamvsr_frames_received_total")
                    return now > received + 20

                await wait_until(streaming, 10, "frames to keep arriving")
                assert node.process.poll() is None
                assert "Redis" in node.output() and "unreachable" in node.output()
            finally:
                await asyncio.gather(*(pc.close() for pc in peers))


async def test_an_obs_like_publisher_follows_the_307(tmp_path: Path) -> None:
    """OBS's WebRTC stack (libdatachannel, the OBS-like script of test_libdatachannel.py) at a
    full front door: sent on to the other node, it publishes there and DELETEs its Location."""
    env = libdatachannel()
    h264_clip(tmp_path / "video.au")
    opus_clip(tmp_path / "audio.au")
    with redis_server() as redis, cluster_nodes(redis.url, tmp_path, 2, *ONE_SLOT) as [a, b]:
        async with aiohttp.ClientSession() as http:
            status, final, _, taken, _ = await publish(http, f"{a.url}/whip/first")
            try:
                assert status == 201 and final.startswith(a.url)
                report = await run_node(
                    env, "obs_like_whip.mjs", f"{a.url}/whip/live", "--seconds", "3",
                    "--video", str(tmp_path / "video.au"), "--audio", str(tmp_path / "audio.au"),
                )  # fmt: skip
            finally:
                await taken.close()
    assert report["status"] == 201 and report["state"] == "connected", report
    assert report["location"].startswith(f"{b.url}/whip/live/"), report
    assert report["sent"]["video"] > 30 and report["deleted"] == 200, report
