"""Engine sessions (page, WHIP) and WHEP viewers are limited apart: viewers, who need no token,
never take a publisher's place."""

from __future__ import annotations

from support.hostile import connected_publisher, post_sdp, registry_of
from support.webrtc import running_server, viewer_offer

from streamvsr.engine import BicubicEngine

TOKEN = "obs-stream-key"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _view(server, stream: str, count: int) -> list[int]:
    """The statuses of ``count`` anonymous viewers' offers (their peers never connect)."""
    statuses = []
    for _ in range(count):
        pc, _, offer = await viewer_offer(keep_images=False)
        await pc.close()
        status, _, _ = await post_sdp(server, f"/whep/{stream}", offer)
        statuses.append(status)
    return statuses


async def test_viewers_filling_their_slots_leave_publishers_theirs() -> None:
    settings = {"max_sessions": 2, "max_viewers": 3, "whip_token": TOKEN}
    async with (
        running_server(BicubicEngine("cpu"), server=settings) as server,
        connected_publisher(server, "cam", AUTH),
    ):
        assert await _view(server, "cam", 4) == [201, 201, 201, 503]
        async with connected_publisher(server, "other", AUTH):  # the second engine place
            assert registry_of(server).source_of("other") is not None


async def test_the_limit_of_viewers_per_stream() -> None:
    settings = {"max_viewers": 4, "max_viewers_per_stream": 2}
    async with (
        running_server(BicubicEngine("cpu"), server=settings) as server,
        connected_publisher(server, "a"),
        connected_publisher(server, "b"),
    ):
        assert await _view(server, "a", 2) == [201, 201]
        _, _, offer = await viewer_offer(keep_images=False)
        status, problem, _ = await post_sdp(server, "/whep/a", offer)
        assert status == 503 and "stream 'a'" in problem, problem
        assert await _view(server, "b", 2) == [201, 201]


async def test_a_refusal_is_a_problem_with_retry_after() -> None:
    async with (
        running_server(BicubicEngine("cpu"), server={"max_viewers": 1}) as server,
        connected_publisher(server),
    ):
        assert await _view(server, "cam", 1) == [201]
        _, _, offer = await viewer_offer(keep_images=False)
        async with server.http.post(
            "/whep/cam", data=offer, headers={"Content-Type": "application/sdp"}
        ) as response:
            assert response.status == 503 and response.headers["Retry-After"]
            assert response.content_type == "application/problem+json"
