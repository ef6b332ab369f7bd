"""Bad requests and misbehaving peers: each refused with the right 4xx and an
``application/problem+json`` body (never a 500), and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from support.webrtc import (
    SyntheticVideo,
    client_pc,
    codec,
    h264_baseline,
    identify,
    make_offer,
    open_browser_peer,
    pattern,
    problem_of,
    running_server,
    strip_candidates,
    value,
    wait_until,
)

from streamvsr.engine import BicubicEngine

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SDP = "application/sdp"
JSON = "application/json"
MAX_BODY = 4096  # an offer of aiortc's is ~2-3 KB
ORIGIN = "https://player.example"  # a WHEP/WHIP page elsewhere, allowed by cors_origins
SETTINGS = {"whip_token": TOKEN, "max_body_bytes": MAX_BODY, "cors_origins": [ORIGIN]}


# --- offers that cannot be served ----------------------------------------------------------------


async def audio_only() -> str:
    return await make_offer(video=None, audio="sendrecv")


async def h264_high_only(direction: str = "sendrecv") -> str:
    """What a browser or OBS offers with only an H.264 High profile encoder."""
    sdp = await make_offer(video=direction, video_codecs=[h264_baseline()])
    assert "profile-level-id=42e01f" in sdp
    return sdp.replace("profile-level-id=42e01f", "profile-level-id=640c1f")


async def av1_only(direction: str = "sendrecv") -> str:
    sdp = await make_offer(video=direction, video_codecs=[h264_baseline()])
    lines = [line for line in sdp.splitlines() if not line.startswith("a=fmtp:")]
    return "\r\n".join(lines).replace("H264/90000", "AV1/90000") + "\r\n"


async def without_ice_credentials() -> str:
    sdp = await make_offer()
    return "\r\n".join(
        line for line in sdp.splitlines() if not line.startswith(("a=ice-ufrag", "a=ice-pwd"))
    )


async def without_fingerprint() -> str:
    sdp = await make_offer()
    return "\r\n".join(line for line in sdp.splitlines() if not line.startswith("a=fingerprint"))


def offer_json(make_sdp: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[str]]:
    async def body() -> str:
        return json.dumps({"type": "offer", "sdp": await make_sdp()})

    return body


def constant(text: str) -> Callable[[], Awaitable[str]]:
    async def body() -> str:
        return text

    return body


async def good_offer() -> str:
    return await make_offer()


async def obs_offer() -> str:
    return strip_candidates(await make_offer(video="sendonly", audio="sendonly"))


@dataclass
class Case:
    id: str
    method: str
    path: str
    content_type: str | None
    body: Callable[[], Awaitable[str]]
    status: int
    detail: tuple[str, ...] = ()  # words the problem's detail must contain (any case)
    headers: dict[str, str] | None = None


CASES = [
    Case("offer-content-type", "POST", "/offer", "text/plain", offer_json(good_offer), 415,
         ("application/json",)),
    Case("whip-content-type", "POST", "/whip/cam", JSON, obs_offer, 415, ("application/sdp",),
         AUTH),
    Case("whep-content-type", "POST", "/whep/cam", "text/plain", obs_offer, 415),
    Case("offer-malformed-json", "POST", "/offer", JSON, constant('{"type": "offer", "sdp": '),
         400),
    Case("offer-json-not-an-offer", "POST", "/offer", JSON, constant('["offer"]'), 400),
    Case("offer-answer-type", "POST", "/offer", JSON,
         constant(json.dumps({"type": "answer", "sdp": "v=0\r\n"})), 400),
    Case("offer-malformed-sdp", "POST", "/offer", JSON,
         constant(json.dumps({"type": "offer", "sdp": "hello"})), 400, ("sdp",)),
    Case("whip-malformed-sdp", "POST", "/whip/cam", SDP, constant("not an sdp"), 400, ("sdp",),
         AUTH),
    Case("offer-sdp-without-ice-credentials", "POST", "/offer", JSON,
         offer_json(without_ice_credentials), 400),
    Case("offer-sdp-without-fingerprint", "POST", "/offer", JSON,
         offer_json(without_fingerprint), 400, ("fingerprint",)),
    Case("offer-audio-only", "POST", "/offer", JSON, offer_json(audio_only), 422, ("video",)),
    Case("whip-audio-only", "POST", "/whip/cam", SDP, audio_only, 422, ("video",), AUTH),
    Case("offer-h264-high-only", "POST", "/offer", JSON, offer_json(h264_high_only), 422,
         ("h264", "baseline", "vp8")),
    Case("whip-h264-high-only", "POST", "/whip/cam", SDP, lambda: h264_high_only("sendonly"),
         422, ("h264", "baseline"), AUTH),
    Case("offer-av1-only", "POST", "/offer", JSON, offer_json(av1_only), 422, ("av1", "vp8")),
    Case("whip-av1-only", "POST", "/whip/cam", SDP, lambda: av1_only("sendonly"), 422,
         ("av1", "h.264"), AUTH),
    Case("whep-offer-that-receives-no-video", "POST", "/whep/cam", SDP, obs_offer, 422,
         ("recvonly",)),
    Case("offer-too-large", "POST", "/offer", JSON, constant("x" * 3 * MAX_BODY), 413),
    Case("whip-too-large", "POST", "/whip/cam", SDP, constant("v=0\r\n" + "x" * 3 * MAX_BODY),
         413, (), AUTH),
    Case("whip-wrong-token", "POST", "/whip/cam", SDP, obs_offer, 401, (),
         {"Authorization": "Bearer nope"}),
    Case("delete-unknown-whip", "DELETE", "/whip/cam/0123abcd", None, constant(""), 404, (),
         AUTH),
    Case("delete-unknown-whep", "DELETE", "/whep/cam/0123abcd", None, constant(""), 404),
    Case("offer-wrong-method", "PUT", "/offer", JSON, offer_json(good_offer), 405),
    Case("unknown-path", "POST", "/whip/cam/session/extra", SDP, obs_offer, 404),
    Case("get-offer", "GET", "/offer", None, constant(""), 405),
    Case("get-unknown-path", "GET", "/no/such/page", None, constant(""), 404),
]  # fmt: skip


async def send(server, case: Case):
    headers = {"Origin": ORIGIN, **(case.headers or {})}
    if case.content_type:
        headers["Content-Type"] = case.content_type
    body = await case.body()
    return server.http.request(case.method, case.path, data=body or None, headers=headers)


async def check_refused(server, case: Case) -> None:
    async with await send(server, case) as response:
        assert response.status == case.status, (case.id, response.status, await response.text())
        problem = await problem_of(response)
        if case.path.startswith(("/whip", "/whep")):  # browser WHIP/WHEP clients can read it
            assert response.headers["Access-Control-Allow-Origin"] == ORIGIN, case.id
        if case.status == 405:
            assert "Allow" in response.headers, case.id
    detail = problem.get("detail", "").lower()
    for word in case.detail:
        assert word in detail, (case.id, detail)


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case.id) for case in CASES],
)
async def test_bad_request_is_refused_with_a_problem(case: Case) -> None:
    async with running_server(BicubicEngine("cpu"), server=SETTINGS) as server:
        await check_refused(server, case)
        status, ready = await server.readyz()
        assert status == 200 and ready["sessions"] == 0  # nothing was left half-open
        samples = await server.scrape()
        for kind in ("browser", "whip", "whep"):
            assert value(samples, "streamvsr_sessions_active", kind=kind) == 0


async def test_server_keeps_serving_after_bad_requests() -> None:
    async with running_server(BicubicEngine("cpu"), server=SETTINGS) as server:
        for case in CASES:
            await check_refused(server, case)
        video = SyntheticVideo()
        peer = await open_browser_peer(server.http, video)
        try:
            await peer.collector.wait_video(15)
        finally:
            await peer.close()
    for frame in peer.collector.video:
        assert (frame.width, frame.height) == (256, 192)
        assert identify(frame.image, video)[1] < 8


# --- the session limit and peers that leave without DELETE -----------------------------------


async def test_session_limit_and_peers_that_vanish() -> None:
    settings = {"max_sessions": 1, "idle_timeout_s": 1}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        http = server.http

        async def sessions_freed() -> bool:
            status, ready = await server.readyz()
            return status == 200 and ready["sessions"] == 0

        first = await open_browser_peer(server.http, SyntheticVideo())
        peers = [first]
        try:
            await first.collector.wait_video(5)
            # Full: another session is refused with 503 + Retry-After, whatever the protocol.
            async with http.post(
                "/offer", json={"type": "offer", "sdp": await make_offer()}
            ) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) > 0
                await problem_of(response)
            async with http.post(
                "/whip/cam", data=await obs_offer(), headers={"Content-Type": SDP}
            ) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) > 0
                await problem_of(response)
            samples = await server.scrape()
            assert value(samples, "streamvsr_sessions_rejected_total", status="503") == 2

            # The peer goes quiet (no more video, no DELETE): freed after the idle timeout.
            first.video.pause()
            quiet_since = time.monotonic()
            await wait_until(sessions_freed, 5, "the quiet session to be freed")
            assert time.monotonic() - quiet_since >= 0.5  # not before the timeout

            # The slot is free again; this peer closes its connection without a DELETE.
            second = await open_browser_peer(server.http, SyntheticVideo())
            peers.append(second)
            await second.collector.wait_video(5)
            await second.pc.close()
            await wait_until(sessions_freed, 5, "the closed session to be freed")

            third = await open_browser_peer(server.http, SyntheticVideo())
            peers.append(third)
            await third.collector.wait_video(5)
        finally:
            await asyncio.gather(*(peer.close() for peer in peers))


async def test_frame_size_change_mid_stream() -> None:
    switch = 45

    def frames(n: int):
        return pattern(n, 64, 48) if n < switch else pattern(n, 96, 64)

    video = SyntheticVideo(frames)
    async with running_server(BicubicEngine("cpu")) as server:
        peer = await open_browser_peer(server.http, video)
        try:
            await peer.collector.wait_video(1)
            await asyncio.sleep(3.0)
        finally:
            await peer.close()

    received = peer.collector.video
    sizes = [(f.width, f.height) for f in received]
    assert set(sizes) == {(256, 192), (384, 256)}, set(sizes)
    change = sizes.index((384, 256))
    assert sizes[:change] == [(256, 192)] * change
    assert sizes[change:] == [(384, 256)] * (len(sizes) - change)
    assert len(sizes) - change >= 20, "frames stopped after the size change"
    for frame in received:
        n, difference = identify(frame.image, video)
        assert (n >= switch) == (frame.width == 384)
        assert difference < 8, (n, difference)


def test_codec_helpers_make_what_they_claim() -> None:
    """The crafted offers above really offer only the codec under test."""
    high = asyncio.run(h264_high_only())
    assert "profile-level-id=640c1f" in high and "VP8" not in high and "42e01f" not in high
    av1 = asyncio.run(av1_only())
    assert "AV1/90000" in av1 and "H264" not in av1 and "VP8" not in av1
    assert codec("video", "video/H264", **{"profile-level-id": "42e01f"}) == h264_baseline()


# --- bodies, encodings and headers that used to end in a 500 ----------------------------------


def encoded(make_sdp: Callable[[], Awaitable[str]], encoding: str) -> Callable[[], Awaitable]:
    async def body() -> bytes:
        return (await make_sdp()).encode(encoding)

    return body


def raw(data: bytes) -> Callable[[], Awaitable[bytes]]:
    async def body() -> bytes:
        return data

    return body


BIG_INTEGER = b'{"type": "offer", "sdp": "v=0", "n": ' + b"1" * 5000 + b"}"
ENCODING_CASES = [
    Case("whip-utf16-body", "POST", "/whip/cam", SDP, encoded(obs_offer, "utf-16"), 400,
         ("utf-8",), AUTH),
    Case("whep-utf32-body", "POST", "/whep/cam", SDP, encoded(obs_offer, "utf-32"), 400,
         ("utf-8",)),
    Case("whip-unknown-charset", "POST", "/whip/cam", f"{SDP}; charset=klingon", obs_offer, 415,
         ("charset",), AUTH),
    Case("offer-unknown-charset", "POST", "/offer", f"{JSON}; charset=x-nope",
         offer_json(good_offer), 415, ("charset",)),
    Case("offer-deeply-nested-json", "POST", "/offer", JSON, raw(b"[" * 3000), 400),
    Case("offer-5000-digit-integer", "POST", "/offer", JSON, raw(BIG_INTEGER), 400),
    Case("offer-bad-gzip", "POST", "/offer", JSON, raw(b"not gzip at all"), 400, (),
         {"Content-Encoding": "gzip"}),
    Case("offer-bad-deflate", "POST", "/offer", JSON, raw(b"not deflate either"), 400, (),
         {"Content-Encoding": "deflate"}),
    Case("whip-non-ascii-token", "POST", "/whip/cam", SDP, obs_offer, 401, (),
         {"Authorization": "Bearer t\u00f6ken"}),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in ENCODING_CASES])
async def test_undecodable_request_is_refused_with_a_problem(case: Case) -> None:
    settings = {**SETTINGS, "max_body_bytes": 65536}  # room for a UTF-32 offer
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        await check_refused(server, case)
        status, ready = await server.readyz()
        assert status == 200 and ready["sessions"] == 0


# --- offers that pass our checks but that aiortc cannot answer ---------------------------------


def mids(sdp: str, replace: Callable[[str], str | None]) -> str:
    """``sdp`` with each a=mid line replaced (None: removed)."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=mid:"):
            line = replace(line)
        if line is not None:
            lines.append(line)
    return "\r\n".join(lines) + "\r\n"


UNANSWERABLE = {
    "missing-mid": lambda sdp: mids(sdp, lambda line: None),
    "duplicate-mid": lambda sdp: mids(sdp, lambda line: "a=mid:0"),
    "spaced-mid": lambda sdp: mids(sdp, lambda line: "a=mid:a b"),
    "50kb-mid": lambda sdp: mids(sdp, lambda line: "a=mid:" + "m" * 50_000),
}
NEGOTIATION_SETTINGS = {"max_body_bytes": 200_000}


async def unanswerable_problem(server, path: str, body, content_type: str) -> dict:
    async with server.http.post(path, data=body, headers={"Content-Type": content_type}) as resp:
        assert 400 <= resp.status < 500, (resp.status, await resp.text())
        problem = await problem_of(resp)
    assert "object" not in problem.get("detail", ""), problem  # no Python internals
    status, ready = await server.readyz()
    assert status == 200
    return ready


@pytest.mark.parametrize("mutation", sorted(UNANSWERABLE))
async def test_offer_that_aiortc_cannot_answer_is_a_4xx(mutation: str) -> None:
    mutate = UNANSWERABLE[mutation]
    async with running_server(BicubicEngine("cpu"), server=NEGOTIATION_SETTINGS) as server:
        sdp = mutate(await make_offer(video="sendrecv", audio="sendrecv"))
        offer = json.dumps({"type": "offer", "sdp": sdp})
        ready = await unanswerable_problem(server, "/offer", offer, JSON)
        assert ready["sessions"] == 0
        whip = mutate(await make_offer(video="sendonly", audio="sendonly"))
        ready = await unanswerable_problem(server, "/whip/cam", whip, SDP)
        assert ready["sessions"] == 0


async def test_whep_offer_with_two_video_sections_is_a_4xx() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        async with server.http.post(
            "/whip/cam", data=await obs_offer(), headers={"Content-Type": SDP}
        ) as response:
            assert response.status == 201  # registered: WHEP can view it (no need to connect)
        pc = client_pc()
        try:
            for _ in range(2):
                pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            ready = await unanswerable_problem(server, "/whep/cam", pc.localDescription.sdp, SDP)
        finally:
            await pc.close()
        assert ready["sessions"] == 1  # the publisher only


# --- malformed HTTP, refused by aiohttp itself -------------------------------------------------

MALFORMED_HTTP = [
    b"POST /offer HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\n",
]


async def raw_exchange(server, request: bytes) -> bytes:
    port = server.runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", MALFORMED_HTTP, ids=range(len(MALFORMED_HTTP)))
async def test_malformed_http_is_a_400_logged_in_one_line(request_bytes: bytes, caplog) -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        caplog.clear()
        response = await raw_exchange(server, request_bytes)
        assert response.split(b" ", 2)[1] == b"400", response[:200]
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"Content-Type: application/problem+json" in head, head
        assert json.loads(body)["status"] == 400
        assert (await server.readyz())[0] == 200  # and it keeps serving
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert refused, "the refusal is still logged"
    for record in refused:
        assert record.levelno < logging.WARNING and not record.exc_info, record.getMessage()
        assert len(record.getMessage()) < 300
