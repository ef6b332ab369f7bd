"""Clients that hold server resources without using them: offers that never connect, viewers that
go silent; and a connected WHIP publisher to view."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiortc import RTCPeerConnection, RTCSessionDescription

from streamvsr.server.http import RUNTIME
from streamvsr.server.sessions import SessionRegistry

from .webrtc import Server, SineAudio, SyntheticVideo, client_pc, wait_until

SDP = "application/sdp"


def registry_of(server: Server) -> SessionRegistry:
    return server.app[RUNTIME].registry


async def post_sdp(server: Server, path: str, offer: str, headers: dict | None = None):
    """POST an SDP offer: (status, answer or problem text, Location)."""
    async with server.http.post(
        path, data=offer, headers={"Content-Type": SDP, **(headers or {})}
    ) as response:
        return response.status, await response.text(), response.headers.get("Location")


@contextlib.asynccontextmanager
async def connected_publisher(
    server: Server, stream: str = "cam", headers: dict | None = None
) -> AsyncIterator[RTCPeerConnection]:
    """A WHIP publisher of ``stream`` sending video and audio, connected."""
    pc = client_pc()
    pc.addTransceiver(SyntheticVideo(), direction="sendonly")
    pc.addTransceiver(SineAudio(), direction="sendonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, _ = await post_sdp(
            server, f"/whip/{stream}", pc.localDescription.sdp, headers
        )
        assert status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_until(_connected(pc), 10, "the publisher to connect")
        yield pc
    finally:
        await pc.close()


def _connected(pc: RTCPeerConnection):
    async def check() -> bool:
        return pc.connectionState == "connected"

    return check


async def connect(pc: RTCPeerConnection, answer: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await wait_until(_connected(pc), 10, "the peer to connect")


def go_silent(pc: RTCPeerConnection) -> None:
    """The peer's machine drops off the network: nothing it sends arrives any more (no RTCP, no
    STUN, no DTLS close), and it never sends DELETE."""
    transport = pc.getTransceivers()[0].receiver.transport.transport  # the bundled ICE transport
    for protocol in transport.iceGatherer._connection._protocols:
        protocol.transport.sendto = lambda *args, **kwargs: None
