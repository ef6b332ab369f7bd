"""Stream names in WHIP/WHEP URLs: a safe alphabet, checked before a session is opened, so that
the session's Location works and no client text reaches a header or a log line unescaped."""

from __future__ import annotations

import logging

import aiohttp
import pytest
import yarl
from support.webrtc import make_offer, problem_of, running_server, strip_candidates

from streamvsr.engine import BicubicEngine

SDP = {"Content-Type": "application/sdp"}
BAD_NAMES = [
    "%00", "%0a", "%0d%0aX-Forged:%201", "a%2Fb", "a%3Fb", "a%23b", "a%20b", "caf%C3%A9",
    "x" * 65, "..", ".", "%2e%2e", "a:b", "a%25b",
]  # fmt: skip


async def obs_offer() -> str:
    return strip_candidates(await make_offer(video="sendonly", audio="sendonly"))


async def post(server, kind: str, name: str, offer: str):
    url = yarl.URL(f"{server.url}/{kind}/{name}", encoded=True)  # sent exactly as written
    async with aiohttp.ClientSession() as http, http.post(url, data=offer, headers=SDP) as resp:
        return resp.status, await problem_of(resp)


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_unsafe_stream_names_are_refused_before_anything_opens(name: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server(BicubicEngine("cpu")) as server:
        offer = await obs_offer()
        for kind in ("whip", "whep"):
            status, problem = await post(server, kind, name, offer)
            assert status == 400, (kind, problem)
            assert "stream name" in problem["detail"]
        _, ready = await server.readyz()
        assert ready["sessions"] == 0
    for record in caplog.records:  # the server logs client text escaped (repr), never raw
        if record.name.startswith(("streamvsr", "aiohttp")):
            assert "\n" not in record.getMessage() and "\x00" not in record.getMessage()


@pytest.mark.parametrize("name", ["cam-1.main_~x", "A" * 64, "live"])
async def test_safe_stream_names_give_a_location_that_deletes(name: str) -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        async with server.http.post(f"/whip/{name}", data=await obs_offer(), headers=SDP) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        assert location.startswith(f"/whip/{name}/")
        async with server.http.delete(location) as response:
            assert response.status == 200
        _, ready = await server.readyz()
        assert ready["sessions"] == 0
