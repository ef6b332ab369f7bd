"""Trickle ICE from WHIP/WHEP clients (RFC 9725 section 4.3, RFC 8840 fragments) on 127.0.0.1."""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection, RTCSessionDescription
from support.webrtc import (
    Server,
    SyntheticVideo,
    client_pc,
    problem_of,
    running_server,
    strip_candidates,
    value,
    wait_until,
)

from streamvsr.engine import BicubicEngine

TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}


def fragment(sdp: str, end: bool = True, ufrag: str | None = None) -> str:
    """The RFC 8840 fragment of a local description's candidates, as a WHIP client sends it."""
    own_ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp).group(1)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp).group(1)
    mid = re.search(r"a=mid:(\S+)", sdp).group(1)
    candidates = sorted(set(re.findall(r"^a=candidate:.*$", sdp, re.MULTILINE)))
    lines = [f"a=ice-ufrag:{ufrag or own_ufrag}", f"a=ice-pwd:{pwd}", "m=video 9 RTP/AVP 0"]
    lines += [f"a=mid:{mid}", *candidates] + (["a=end-of-candidates"] if end else [])
    return "\r\n".join(lines) + "\r\n"


async def publish_without_candidates(server: Server, pc: RTCPeerConnection):
    """POST an offer without candidates; apply the answer without the server's either, so that
    only the candidates trickled later can connect the two."""
    pc.addTransceiver(SyntheticVideo(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = strip_candidates(pc.localDescription.sdp)
    async with server.http.post(
        "/whip/cam", data=offer, headers={"Content-Type": "application/sdp"}
    ) as response:
        answer = await response.text()
        assert response.status == 201, answer
        assert response.headers["Accept-Patch"] == TRICKLE["Content-Type"]
        location, etag = response.headers["Location"], response.headers["ETag"]
    await pc.setRemoteDescription(RTCSessionDescription(strip_candidates(answer), "answer"))
    return location, etag


async def test_trickled_candidates_connect_a_publisher() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        pc = client_pc()
        try:
            location, etag = await publish_without_candidates(server, pc)
            body = fragment(pc.localDescription.sdp)
            assert "a=candidate:" in body
            async with server.http.patch(
                location, data=body, headers={**TRICKLE, "If-Match": etag}
            ) as response:
                assert response.status == 204, await response.text()

            async def frames_received() -> bool:
                samples = await server.scrape()
                return value(samples, "streamvsr_frames_received_total") >= 5

            await wait_until(frames_received, 15, "the trickled publisher's video")
        finally:
            await pc.close()


async def test_patch_errors() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        pc = client_pc()
        try:
            location, etag = await publish_without_candidates(server, pc)
            local = pc.localDescription.sdp
            cases = [
                (location, fragment(local), {"Content-Type": "application/sdp"}, 415),
                (location, fragment(local), {**TRICKLE, "If-Match": '"other"'}, 412),
                (location, fragment(local, ufrag="restart"), TRICKLE, 422),
                (location, "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n", TRICKLE, 400),
                (location, "m=video 9 RTP/AVP 0\r\na=mid:nope\r\n", TRICKLE, 400),
                (location, "not sdp\r\n", TRICKLE, 400),
                ("/whip/cam/0123456789abcdef0123456789abcdef", fragment(local), TRICKLE, 404),
            ]
            for url, body, headers, status in cases:
                async with server.http.patch(url, data=body, headers=headers) as response:
                    assert response.status == status, (body, headers, await response.text())
                    await problem_of(response)
            # If-Match: * (or the ETag among others) matches; no candidates is fine.
            for match in ("*", f'"other", {etag}'):
                async with server.http.patch(
                    location,
                    data=fragment(local, end=False),
                    headers={**TRICKLE, "If-Match": match},
                ) as response:
                    assert response.status == 204, await response.text()
        finally:
            await pc.close()
