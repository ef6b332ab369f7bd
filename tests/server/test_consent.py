"""A WHIP publisher that never answers ICE consent checks (as FFmpeg's WHIP muxer) stays live
while it sends media; one that goes silent is dropped. aioice's consent interval is shrunk."""

from __future__ import annotations

import aioice.ice
import pytest
from aiortc import RTCSessionDescription
from support.webrtc import (
    SyntheticVideo,
    client_pc,
    h264_baseline,
    running_server,
    value,
    wait_until,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server import consent

# aioice drops a peer after this many unanswered checks in a row; it checks every 5 s.
FAILURES = aioice.ice.CONSENT_FAILURES
SDP = "application/sdp"


@pytest.fixture
def forgiven(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Fast consent checks; each unanswered one's verdict (forgiven or not) is kept."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    verdicts: list[bool] = []
    consents = consent.consents

    def recording(*args) -> bool:
        verdicts.append(consents(*args))
        return verdicts[-1]

    monkeypatch.setattr(consent, "consents", recording)
    return verdicts


async def publish(server):
    """An aiortc WHIP publisher of video; returns its peer connection once frames arrive."""
    pc = client_pc()
    pc.addTransceiver(SyntheticVideo(), direction="sendonly").setCodecPreferences([h264_baseline()])
    await pc.setLocalDescription(await pc.createOffer())
    async with server.http.post(
        "/whip/cam", data=pc.localDescription.sdp, headers={"Content-Type": SDP}
    ) as response:
        assert response.status == 201
        answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await wait_until(lambda: frames_received(server, 5), 10, "the server to receive video")
    return pc


async def frames_received(server, at_least: float) -> float:
    count = value(await server.scrape(), "streamvsr_frames_received_total")
    return count if count >= at_least else 0


def ice_connection(pc) -> aioice.ice.Connection:
    return pc.getTransceivers()[0].sender.transport.transport._connection


def stop_consent(connection: aioice.ice.Connection) -> None:
    """Like FFmpeg's muxer once it streams: no answers to binding requests, no requests."""
    connection.request_received = lambda *args: None
    connection._query_consent_task.cancel()


async def sessions(server) -> int:
    _, ready = await server.readyz()
    return ready["sessions"]


async def test_a_publisher_that_sends_media_keeps_consent(forgiven: list[bool]) -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        pc = await publish(server)
        try:
            stop_consent(ice_connection(pc))
            # 60 s of aioice's time at its real interval: twice as many checks as it forgives.
            await wait_until(lambda: _counted(forgiven, 2 * FAILURES), 30, "12 forgiven checks")
            assert all(forgiven), "an unanswered check was not forgiven while media flowed"
            assert await sessions(server) == 1
            before = await frames_received(server, 0)
            await wait_until(lambda: frames_received(server, before + 10), 5, "more frames")
        finally:
            await pc.close()


async def test_a_silent_publisher_is_dropped(forgiven: list[bool]) -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        pc = await publish(server)
        try:
            connection = ice_connection(pc)
            stop_consent(connection)
            for protocol in connection._protocols:
                protocol.send_data = _drop
                protocol.send_stun = lambda *args: None
            await wait_until(lambda: _zero(sessions(server)), 20, "the silent publisher to go")
            assert forgiven.count(False) >= FAILURES
        finally:
            await pc.close()


async def _counted(verdicts: list, count: int) -> bool:
    return len(verdicts) >= count


async def _zero(count) -> bool:
    return await count == 0


async def _drop(*args) -> None:
    pass
