"""Sessions that come and go leave nothing behind: no threads, no peer connections, and each
live session takes a few threads whatever the core count (``streamvsr bench-churn`` measures the
memory of thousands)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import pytest
from support.webrtc import running_server, wait_until

from streamvsr.bench.churn import Clients
from streamvsr.server import memory
from streamvsr.server.decoding import decoder_factory
from streamvsr.server.encoders import x264_threads
from streamvsr.server.sessions import PeerConnection, PeerSession

PLACES = {"max_sessions": 8, "max_viewers": 8, "max_viewers_per_stream": 8}
KINDS = ("offer", "whip", "whep")


def media_threads() -> int:
    """This process's threads but for Python's own ones that are not aiortc's decoder threads
    (executor workers stay once started, and are bounded by the executor). Garbage is collected
    first: frames in reference cycles keep their swscale threads until then."""
    gc.collect()
    python = [t for t in threading.enumerate() if "decoder_worker" not in t.name]
    return len(os.listdir("/proc/self/task")) - len(python)


def alive(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


async def churn(clients: Clients, cycles: int, concurrency: int) -> None:
    names = iter(range(cycles))

    async def worker() -> None:
        for n in names:
            await clients.cycle(KINDS[n % len(KINDS)], f"churn-{n}", 3, 20.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def no_sessions(server) -> bool:
    _, body = await server.readyz()
    return body["sessions"] == 0


async def test_churned_sessions_leave_no_threads_or_peer_connections() -> None:
    async with running_server(server=PLACES) as server:
        clients = Clients(server.http, (64, 48), 30)
        await churn(clients, 3, 3)  # every codec and the executor's threads have started
        await wait_until(lambda: no_sessions(server), 10, "the warm-up sessions to close")
        baseline_threads = media_threads()
        connections = alive(PeerConnection)
        assert alive(PeerSession) == 0

        # Two live sessions of each kind (a WHEP viewer comes with its publisher): this process
        # holds both ends. Codecs of small frames, frame conversions and audio resampling start
        # no threads: what is left is aiortc's decoder thread per received track (before the
        # bounds: ~14 threads per session for both ends on 2 cores, one per core more in each
        # pool on larger machines).
        held = [
            await asyncio.wait_for(clients.open(kind, f"held-{kind}-{n}", 3), 20.0)
            for kind in KINDS
            for n in range(2)
        ]
        try:
            await asyncio.sleep(0.5)
            _, body = await server.readyz()
            live = body["sessions"]
            per_session = (media_threads() - baseline_threads) / live
        finally:
            for peers in held:
                for peer in peers:
                    await peer.close(server.http)
        assert live == 8, body
        assert per_session <= 3, per_session

        await churn(clients, 24, 3)
        await wait_until(lambda: no_sessions(server), 20, "the churned sessions to close")

        async def threads_back() -> bool:
            return media_threads() <= baseline_threads

        await wait_until(threads_back, 10, f"threads back to {baseline_threads}", interval=0.2)
        assert alive(PeerSession) == 0
        assert alive(PeerConnection) <= connections


@pytest.mark.parametrize(
    ("size", "most", "cpus", "threads"),
    [
        ((256, 192), 4, 16, 1),
        ((1280, 720), 4, 16, 2),
        ((1920, 1080), 4, 16, 4),
        ((2560, 1440), 4, 16, 4),
        ((2560, 1440), 4, 2, 2),
        ((2560, 1440), 0, 16, 0),
    ],
)
def test_x264_threads_follow_the_frame_size_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch, size, most, cpus, threads
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert x264_threads(*size, most) == threads


def test_video_decoders_take_one_thread() -> None:
    from aiortc.codecs import get_capabilities

    get_decoder = decoder_factory(lambda: None)
    for codec in get_capabilities("video").codecs:
        if codec.mimeType in ("video/H264", "video/VP8"):
            assert get_decoder(codec)._inner.codec.thread_count == 1


async def test_trims_run_in_a_thread_once_per_burst_of_closes() -> None:
    calls: list[str] = []
    trimmer = memory.Trimmer(delay=0.05, trim=lambda: calls.append(threading.current_thread().name))
    for _ in range(5):
        trimmer.soon()
    await asyncio.sleep(0.3)
    assert len(calls) == 1 and calls[0] != threading.current_thread().name
    trimmer.soon()
    await asyncio.sleep(0.3)
    assert trimmer.trims == 2


async def test_closing_a_peer_connection_trims_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc import RTCPeerConnection

    calls: list[int] = []
    monkeypatch.setattr(memory, "TRIMMER", memory.Trimmer(0.0, trim=lambda: calls.append(1)))
    close = memory.trimming_after_close(RTCPeerConnection.close)
    await close(RTCPeerConnection())
    await asyncio.sleep(0.2)
    assert calls == [1]


def test_glibc_malloc_can_be_bounded() -> None:
    if memory.glibc() is None:
        pytest.skip("not glibc's malloc")
    assert memory.limit_arenas(8 * (os.cpu_count() or 1))  # glibc's own limit: nothing changes
    assert memory.glibc().malloc_trim(0) in (0, 1)
