"""Ending WHIP/WHEP sessions: DELETE after the client closed its peer connection (as OBS and WHEP
players do), and sessions deleted while they connect, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from support.webrtc import (
    Collector,
    Server,
    SyntheticVideo,
    client_pc,
    problem_of,
    running_server,
    wait_until,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server.http import RUNTIME
from streamvsr.server.sessions import EndedSessions, WhipSession

SDP = {"Content-Type": "application/sdp"}


def publisher() -> RTCPeerConnection:
    pc = client_pc()
    pc.addTransceiver(SyntheticVideo(), direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    return pc


def viewer() -> tuple[RTCPeerConnection, Collector]:
    pc, collector = client_pc(), Collector()
    collector.attach(pc)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return pc, collector


async def post(
    server: Server, path: str, pc: RTCPeerConnection
) -> tuple[str, RTCSessionDescription]:
    """POST the peer's offer; returns the Location and the answer."""
    await pc.setLocalDescription(await pc.createOffer())
    async with server.http.post(path, data=pc.localDescription.sdp, headers=SDP) as response:
        answer = await response.text()
        assert response.status == 201, answer
        return response.headers["Location"], RTCSessionDescription(answer, "answer")


async def connect(server: Server, path: str, pc: RTCPeerConnection) -> str:
    location, answer = await post(server, path, pc)
    await pc.setRemoteDescription(answer)
    return location


async def open_sessions(server: Server) -> int:
    _, ready = await server.readyz()
    return ready["sessions"]


async def test_delete_after_the_peer_closed_is_200() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        publishing = publisher()
        watching, collector = viewer()
        try:
            whip = await connect(server, "/whip/cam", publishing)
            whep = await connect(server, "/whep/cam", watching)
            await collector.wait_video(3)
            for pc, location, left in ((watching, whep, 1), (publishing, whip, 0)):
                await pc.close()  # the close ends the session first ...
                await wait_until(
                    lambda left=left: _sessions_are(server, left), 10, "the session to end"
                )
                async with server.http.delete(location) as response:  # ... then the DELETE
                    assert response.status == 200
            for location in (
                "/whip/cam/0123456789abcdef0123456789abcdef",  # never was
                whep.replace("/whep/", "/whip/"),  # not a WHIP session
                whip.replace("/cam/", "/other/"),  # not of that stream
            ):
                async with server.http.delete(location) as response:
                    assert response.status == 404, location
                    await problem_of(response)
        finally:
            await watching.close()
            await collector.stop()
            await publishing.close()


async def _sessions_are(server: Server, count: int) -> bool:
    return await open_sessions(server) == count


def test_ended_sessions_are_remembered_for_a_while_and_in_bounded_number() -> None:
    now = [0.0]
    ended = EndedSessions(size=2, ttl_s=60, clock=lambda: now[0])
    sessions = [WhipSession.__new__(WhipSession) for _ in range(3)]
    for n, session in enumerate(sessions):
        session.id, session.stream = f"s{n}", "cam"
    ended.add(sessions[0])
    now[0] = 30
    ended.add(sessions[1])
    assert ended.find("s0") == ("whip", "cam")
    now[0] = 60
    ended.add(sessions[2])  # over the bound: the oldest goes
    assert ended.find("s0") is None and ended.find("s1") == ("whip", "cam")
    now[0] = 91  # s1 is 61 s old, s2 31 s
    assert ended.find("s1") is None and ended.find("s2") == ("whip", "cam")
    assert ended.find("unknown") is None


# --- closing while connecting -------------------------------------------------------------------


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict]]:
    """What reaches the event loop's exception handler ("Task exception was never retrieved"
    among them), collected instead of logged."""
    errors: list[dict] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def test_sessions_closed_while_they_connect_leave_no_task_errors(
    loop_errors: list[dict], caplog: pytest.LogCaptureFixture
) -> None:
    """aiortc's connect task raised InvalidStateError (never retrieved) when its connection was
    closed during the DTLS handshake; a race, so each case is tried a few times."""
    caplog.set_level(logging.WARNING)
    clients: list[RTCPeerConnection] = []

    async def delete_as_ice_completes(path: str, pc: RTCPeerConnection, delete: str = "") -> None:
        """POST, and DELETE (the session or ``delete``) the moment the server's ICE completes,
        while its DTLS handshake runs."""
        clients.append(pc)
        location, answer = await post(server, path, pc)
        server_pc = server.app[RUNTIME].registry.get(location.rsplit("/", 1)[1]).pc
        completed = asyncio.Event()

        @server_pc.on("iceconnectionstatechange")
        def on_ice() -> None:
            if server_pc.iceConnectionState == "completed":
                completed.set()

        await pc.setRemoteDescription(answer)
        await asyncio.wait_for(completed.wait(), 10)
        async with server.http.delete(delete or location) as response:
            assert response.status == 200

    async with running_server(BicubicEngine("cpu")) as server:
        try:
            for n in range(4):
                await delete_as_ice_completes(f"/whip/held{n}", publisher())
            live = publisher()
            clients.append(live)
            cam = await connect(server, "/whip/cam", live)
            for _ in range(3):
                await delete_as_ice_completes("/whep/cam", viewer()[0])
            # A viewer that ends with its publisher while it connects.
            await delete_as_ice_completes("/whep/cam", viewer()[0], delete=cam)
            # A publisher deleted before the client even applied the answer.
            clients.append(publisher())
            late, _ = await post(server, "/whip/late", clients[-1])
            async with server.http.delete(late) as response:
                assert response.status == 200
            await wait_until(lambda: _sessions_are(server, 0), 10, "every session to end")
            await asyncio.sleep(0.5)  # the server's connect tasks run to their end
        finally:
            for pc in clients:
                await pc.close()
    gc.collect()  # a task destroyed with an exception nobody retrieved reports it now
    await asyncio.sleep(0)
    assert [c.get("message") for c in loop_errors] == [], loop_errors
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
