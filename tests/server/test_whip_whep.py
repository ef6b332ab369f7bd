"""WHIP ingest as OBS Studio does it and WHEP playback, end to end on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from aiortc import RTCSessionDescription
from support.webrtc import (
    SineAudio,
    SyntheticVideo,
    client_pc,
    codec,
    h264_baseline,
    identify,
    make_offer,
    problem_of,
    running_server,
    strip_candidates,
    stun_server,
    value,
    viewer_offer,
    wait_until,
)

from streamvsr.engine import BicubicEngine

TOKEN = "obs-stream-key"
SDP = "application/sdp"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def obs_like_publisher(video: SyntheticVideo, audio: SineAudio):
    """A peer that offers what OBS's WHIP output offers: sendonly H.264 42e01f
    (packetization-mode 1) and sendonly Opus, and an offer SDP without ICE candidates."""
    pc = client_pc()
    pc.addTransceiver(video, direction="sendonly").setCodecPreferences([h264_baseline()])
    pc.addTransceiver(audio, direction="sendonly").setCodecPreferences(
        [codec("audio", "audio/opus")]
    )
    await pc.setLocalDescription(await pc.createOffer())
    offer = strip_candidates(pc.localDescription.sdp)
    assert "a=candidate" not in offer
    return pc, offer


PLAYER_ORIGIN = "https://player.example"


async def test_obs_like_whip_publish_and_whep_playback() -> None:
    video, audio = SyntheticVideo(), SineAudio(frequency=440)
    settings = {"whip_token": TOKEN, "cors_origins": [PLAYER_ORIGIN]}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        http = server.http
        publisher, offer = await obs_like_publisher(video, audio)
        viewer, collector, first_offer = await viewer_offer()
        second_viewer, second_collector, second_offer = await viewer_offer()
        try:
            started = time.monotonic()
            async with http.post(
                "/whip/cam", data=offer, headers={"Content-Type": SDP, **AUTH}
            ) as response:
                answer = await response.text()
                assert response.status == 201, answer
                assert time.monotonic() - started < 2.0  # OBS gives up after 8 s
                assert response.content_type == SDP
                whip = response.headers["Location"]
                assert whip.startswith("/whip/cam/")
            assert answer.startswith("v=0") and "a=candidate:" in answer
            await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))

            async def frames_received() -> bool:
                samples = await server.scrape()
                return value(samples, "streamvsr_frames_received_total") >= 10

            await wait_until(frames_received, 10, "the server to receive the WHIP video")

            # A second publisher for the same stream is refused.
            async with http.post(
                "/whip/cam", data=offer, headers={"Content-Type": SDP, **AUTH}
            ) as response:
                assert response.status == 409
                await problem_of(response)

            async with http.post(
                "/whep/cam", data=first_offer, headers={"Content-Type": SDP}
            ) as response:
                viewer_answer = await response.text()
                assert response.status == 201, viewer_answer
                assert response.content_type == SDP
                whep = response.headers["Location"]
                assert whep.startswith("/whep/cam/")
            await viewer.setRemoteDescription(RTCSessionDescription(viewer_answer, "answer"))
            await collector.wait_video(20)
            await collector.wait_audio(50)

            # A second viewer, left open: it goes when the publisher goes.
            async with http.post(
                "/whep/cam", data=second_offer, headers={"Content-Type": SDP}
            ) as response:
                second_answer = await response.text()
                assert response.status == 201, second_answer
                second_whep = response.headers["Location"]
            assert second_whep != whep
            await second_viewer.setRemoteDescription(RTCSessionDescription(second_answer, "answer"))

            status, ready = await server.readyz()
            assert status == 200 and ready["sessions"] == 3
            samples = await server.scrape()
            assert value(samples, "streamvsr_sessions_active", kind="whip") == 1
            assert value(samples, "streamvsr_sessions_active", kind="whep") == 2

            # Trickle ICE (tests/server/test_trickle.py): the end of the publisher's candidates;
            # OPTIONS on a session answers CORS.
            async with http.patch(
                whip,
                data="a=end-of-candidates\r\n",
                headers={"Content-Type": "application/trickle-ice-sdpfrag", **AUTH},
            ) as response:
                assert response.status == 204
            async with http.options(whep, headers={"Origin": PLAYER_ORIGIN}) as response:
                assert response.status == 204
                assert "DELETE" in response.headers["Access-Control-Allow-Methods"]
                assert response.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"

            async with http.delete(whep) as response:
                assert response.status == 200
            guessed = whip.rsplit("/", 1)[0] + "/" + "0" * 32
            async with http.delete(guessed, headers=AUTH) as response:
                assert response.status == 404
                await problem_of(response)
            async with http.delete(whip) as response:  # no token: the URL is the secret
                assert response.status == 200

            async def all_closed() -> bool:
                status, ready = await server.readyz()
                return status == 200 and ready["sessions"] == 0

            await wait_until(all_closed, 5, "the sessions (and the second viewer) to be freed")
            samples = await server.scrape()
            assert value(samples, "streamvsr_sessions_active", kind="whip") == 0
            assert value(samples, "streamvsr_sessions_active", kind="whep") == 0
            # Ended lately (the second viewer with its publisher): DELETE is still 200.
            for location in (whep, second_whep):
                async with http.delete(location) as response:
                    assert response.status == 200
            async with http.delete(whip, headers=AUTH) as response:
                assert response.status == 200
        finally:
            for pc, receiver in ((viewer, collector), (second_viewer, second_collector)):
                await pc.close()
                await receiver.stop()
            await publisher.close()

    # The viewer got the publisher's video, 4x, and its audio.
    frames = collector.video
    assert {(f.width, f.height) for f in frames} == {(256, 192)}
    for frame in frames:
        _, difference = identify(frame.image, video)
        assert difference < 8
    samples = np.concatenate([f.image.reshape(-1) for f in collector.audio[10:]])
    left = samples[::2].astype(float)  # interleaved stereo s16
    assert left.std() > 1000, "the audio is silent"
    spectrum = np.abs(np.fft.rfft(left))
    peak_hz = np.argmax(spectrum) * 48000 / len(left)
    assert abs(peak_hz - 440) < 10, peak_hz


async def test_concurrent_publishers_of_one_stream() -> None:
    offers = [
        strip_candidates(await make_offer(video="sendonly", audio="sendonly")) for _ in range(2)
    ]
    async with running_server(BicubicEngine("cpu")) as server:

        async def publish(offer: str) -> int:
            async with server.http.post(
                "/whip/cam", data=offer, headers={"Content-Type": SDP}
            ) as response:
                return response.status

        statuses = await asyncio.gather(*(publish(offer) for offer in offers))
        assert sorted(statuses) == [201, 409]


async def test_whip_token_is_required() -> None:
    offer = await make_offer(video="sendonly")
    async with running_server(BicubicEngine("cpu"), server={"whip_token": TOKEN}) as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with server.http.post(
                "/whip/cam", data=offer, headers={"Content-Type": SDP, **headers}
            ) as response:
                assert response.status == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                await problem_of(response)
        status, ready = await server.readyz()
        assert status == 200 and ready["sessions"] == 0


async def test_options_preflight_and_ice_server_links() -> None:
    ice_servers = [
        {"urls": ["stun:127.0.0.1:3478"]},
        {"urls": "turn:127.0.0.1:3478", "username": "user", "credential": "secret"},
    ]
    async with running_server(
        BicubicEngine("cpu"), server={"ice_servers": ice_servers, "cors_origins": ["*"]}
    ) as server:
        for path in ("/whip", "/whip/cam", "/whep/cam"):
            async with server.http.options(
                path,
                headers={
                    "Origin": "https://player.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            ) as response:
                assert response.status == 204, path
                headers = response.headers
                assert headers["Accept-Post"] == SDP
                assert headers["Access-Control-Allow-Origin"] == "*"
                assert "POST" in headers["Access-Control-Allow-Methods"]
                allowed = headers["Access-Control-Allow-Headers"].lower()
                assert "authorization" in allowed and "content-type" in allowed
                assert "location" in headers["Access-Control-Expose-Headers"].lower()
                links = headers.getall("Link")
                assert '<stun:127.0.0.1:3478>; rel="ice-server"' in links
                turn = [link for link in links if link.startswith("<turn:127.0.0.1:3478>")]
                assert len(turn) == 1 and 'rel="ice-server"' in turn[0]
                assert 'username="user"' in turn[0] and 'credential="secret"' in turn[0]


async def test_whip_answer_carries_ice_server_links() -> None:
    """With a (local, working) STUN server configured, the 201 answers carry Link headers and
    come quickly."""
    async with stun_server() as stun:
        ice_servers = [{"urls": [f"stun:127.0.0.1:{stun.port}"]}]
        async with running_server(
            BicubicEngine("cpu"), server={"ice_servers": ice_servers}
        ) as server:
            offer = strip_candidates(await make_offer(video="sendonly"))
            started = time.monotonic()
            async with server.http.post(
                "/whip/cam", data=offer, headers={"Content-Type": SDP}
            ) as response:
                assert response.status == 201, await response.text()
                assert time.monotonic() - started < 2.0
                assert response.headers.getall("Link") == [
                    f'<stun:127.0.0.1:{stun.port}>; rel="ice-server"'
                ]
                location = response.headers["Location"]
            assert stun.requests >= 1  # the server did use it
            async with server.http.delete(location) as response:
                assert response.status == 200


async def test_whep_for_a_stream_that_is_not_live() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        _, _, offer = await viewer_offer()
        async with server.http.post(
            "/whep/nobody", data=offer, headers={"Content-Type": SDP}
        ) as response:
            assert response.status == 409
            assert int(response.headers["Retry-After"]) > 0
            await problem_of(response)


async def test_patch_and_delete_of_unknown_resources() -> None:
    async with running_server(BicubicEngine("cpu")) as server:
        for method, path in (
            ("PATCH", "/whip/cam/0123456789abcdef0123456789abcdef"),
            ("PATCH", "/whep/cam/nope"),
            ("DELETE", "/whip/cam/nope"),
            ("DELETE", "/whep/cam/nope"),
        ):
            async with server.http.request(
                method, path, headers={"Content-Type": "application/trickle-ice-sdpfrag"}
            ) as response:
                assert response.status == 404, (method, path)
                await problem_of(response)
