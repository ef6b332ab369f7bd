"""Every session kind must finish ICE and DTLS within ``handshake_timeout_s``: an offer whose
client never connects is closed, and its slot freed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from support.hostile import connected_publisher, post_sdp, registry_of
from support.webrtc import make_offer, running_server, viewer_offer, wait_until

from streamvsr.engine import BicubicEngine

TIMEOUT_S = 1.0


async def _freed_after(server, kind: str) -> float:
    """Seconds until no session of ``kind`` is registered any more."""
    registry = registry_of(server)
    started = time.monotonic()

    async def gone() -> bool:
        return not any(s.kind == kind for s in registry._sessions.values())

    await wait_until(gone, TIMEOUT_S + 4, f"the {kind} session to be closed")
    return time.monotonic() - started


async def _post_offer(server, sdp: str) -> None:
    body = json.dumps({"type": "offer", "sdp": sdp})
    headers = {"Content-Type": "application/json"}
    async with server.http.post("/offer", data=body, headers=headers) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("kind", ["browser", "whip"])
async def test_an_upscaled_session_that_never_connects_is_freed(kind: str) -> None:
    settings = {"handshake_timeout_s": TIMEOUT_S, "max_sessions": 1}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        if kind == "browser":
            await _post_offer(server, await make_offer(video="sendrecv"))
        else:
            status, body, _ = await post_sdp(server, "/whip/cam", await make_offer("sendonly"))
            assert status == 201, body
        assert await _freed_after(server, kind) < TIMEOUT_S + 1.5
        status, body, _ = await post_sdp(server, "/whip/other", await make_offer("sendonly"))
        assert status == 201, body  # the slot is free again


async def test_a_whep_offer_that_never_connects_is_freed() -> None:
    async with (
        running_server(BicubicEngine("cpu"), server={"handshake_timeout_s": TIMEOUT_S}) as server,
        connected_publisher(server),
    ):
        pc, _, offer = await viewer_offer(keep_images=False)
        await pc.close()  # it never applies the answer
        status, body, _ = await post_sdp(server, "/whep/cam", offer)
        assert status == 201, body
        assert await _freed_after(server, "whep") < TIMEOUT_S + 1.5
        await asyncio.sleep(TIMEOUT_S)  # a connected session stays past the timeout
        assert registry_of(server).source_of("cam") is not None
