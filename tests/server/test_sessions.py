"""The session registry: its limit, stream names, closing, and the sessions gauge (no network)."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection

from streamvsr.engine import BicubicEngine
from streamvsr.server.metrics import Metrics
from streamvsr.server.problems import Problem
from streamvsr.server.publisher import Publisher
from streamvsr.server.scheduler import FrameScheduler
from streamvsr.server.sessions import BrowserSession, SessionRegistry, WhepSession, WhipSession


@pytest.fixture
async def registry() -> SessionRegistry:
    # The worker thread is not started: the registry only adds and removes streams.
    scheduler = FrameScheduler(BicubicEngine("cpu"), asyncio.get_running_loop())
    return SessionRegistry(3, scheduler, Metrics())


def active(registry: SessionRegistry, kind: str) -> float:
    return registry.metrics.registry.get_sample_value("streamvsr_sessions_active", {"kind": kind})


def browser(registry: SessionRegistry) -> BrowserSession:
    return BrowserSession(RTCPeerConnection(), Publisher(registry.metrics))


def whip(registry: SessionRegistry, stream: str = "cam") -> WhipSession:
    return WhipSession(RTCPeerConnection(), Publisher(registry.metrics), stream)


def opened(registry: SessionRegistry, session):
    with registry.reservation():
        registry.add(session)
    return session


async def test_full_server_refuses_with_503(registry: SessionRegistry) -> None:
    sessions = [opened(registry, browser(registry)), opened(registry, browser(registry))]
    # One being negotiated takes the last place.
    with registry.reservation(), pytest.raises(Problem) as refused, registry.reservation():
        pass
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "10"
    samples = registry.metrics.registry
    assert samples.get_sample_value("streamvsr_sessions_rejected_total", {"status": "503"}) == 1
    with registry.reservation():  # the place is free again
        pass
    for session in sessions:
        await registry.close(session)


async def test_a_published_or_claimed_stream_is_409(registry: SessionRegistry) -> None:
    with registry.reservation(publishing="cam"):
        with pytest.raises(Problem) as claimed, registry.reservation(publishing="cam"):
            pass
        with registry.reservation(publishing="other"):  # other names are free
            pass
    assert claimed.value.status == 409
    source = opened(registry, whip(registry))
    assert registry.source_of("cam") is source and registry.source_of("other") is None
    with pytest.raises(Problem) as published, registry.reservation(publishing="cam"):
        pass
    assert published.value.status == 409
    await registry.close(source)
    with registry.reservation(publishing="cam"):
        pass
    assert len(registry) == 0


async def test_close_is_idempotent(registry: SessionRegistry) -> None:
    session = opened(registry, browser(registry))
    assert registry.get(session.id) is session and active(registry, "browser") == 1
    await registry.close(session, "by the test")
    await registry.close(session, "again")
    assert session.closed and registry.get(session.id) is None
    assert active(registry, "browser") == 0
    assert session.pc.connectionState == "closed"
    assert session.output.readyState == "ended"


async def test_closing_a_publisher_closes_its_viewers(registry: SessionRegistry) -> None:
    source = opened(registry, whip(registry))
    viewers = [opened(registry, WhepSession(RTCPeerConnection(), source)) for _ in range(2)]
    for viewer in viewers:
        viewer.tracks[0].use("video/h264")  # as negotiation does
    assert [active(registry, kind) for kind in ("browser", "whip", "whep")] == [0, 1, 2]

    await registry.close(viewers[0])  # a viewer leaves: the stream and the other viewer stay
    assert not source.closed and source.viewers == {viewers[1]}
    [encoder] = source.publisher.outputs
    assert encoder.viewers == {viewers[1].tracks[0]}
    assert all(track.readyState == "ended" for track in viewers[0].tracks)

    await registry.close(source)
    assert viewers[1].closed and viewers[1].pc.connectionState == "closed"
    assert viewers[1].tracks[0].readyState == "ended"
    assert len(registry) == 0
    assert [active(registry, kind) for kind in ("browser", "whip", "whep")] == [0, 0, 0]


async def test_close_all(registry: SessionRegistry) -> None:
    source = opened(registry, whip(registry))
    opened(registry, WhepSession(RTCPeerConnection(), source))
    opened(registry, browser(registry))
    await registry.close_all()
    assert len(registry) == 0
    assert [active(registry, kind) for kind in ("browser", "whip", "whep")] == [0, 0, 0]
