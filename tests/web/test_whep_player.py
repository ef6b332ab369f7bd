"""A third-party WHEP player in real Chromium: medooze's ``whip-whep`` client (npm, by an author
of the WHEP draft) plays ``/whep/{stream}`` while an aiortc peer publishes to ``/whip/{stream}``.

The library and a small page are served by Playwright on the server's own origin (no CORS). The
library trickles its candidates with PATCH (RFC 9725), which streamvsr accepts (204). Skipped
without Chromium at /usr/bin/chromium or without node, npm and the registry.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from playwright.async_api import Page, Route, async_playwright
from support.browser import CHROMIUM, CHROMIUM_FLAGS, needs_chromium
from support.node import node_packages
from support.webrtc import (
    SyntheticVideo,
    client_pc,
    h264_baseline,
    identify,
    running_server,
    value,
    wait_until,
)

from streamvsr.engine import BicubicEngine

pytestmark = [needs_chromium, pytest.mark.usefixtures("loopback_ice")]

PLAYER = "whip-whep@1.2.0"
# The player page: the library's client views the stream; the page counts presented frames.
PAGE = """<!doctype html>
<video id="video" autoplay muted playsinline></video>
<script type="module">
import { WHEPClient } from "./whep.js";
const video = document.getElementById("video");
const pc = new RTCPeerConnection();
const stream = new MediaStream();
pc.addTransceiver("video", { direction: "recvonly" });
pc.addTransceiver("audio", { direction: "recvonly" });
pc.ontrack = (event) => stream.addTrack(event.track);
video.srcObject = stream;
window.presented = 0;
const count = (_, metadata) => {
  window.presented = metadata.presentedFrames;
  video.requestVideoFrameCallback(count);
};
video.requestVideoFrameCallback(count);
const url = new URL("/whep/cam", location.href).href;  // the library wants an absolute URL
window.viewing = new WHEPClient().view(pc, url).then(() => "viewing", (e) => String(e));
</script>
"""


async def publish(http, video: SyntheticVideo) -> RTCPeerConnection:
    """An aiortc peer publishing ``video`` (H.264) to /whip/cam."""
    pc = client_pc()
    pc.addTransceiver(video, direction="sendonly").setCodecPreferences([h264_baseline()])
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    async with http.post("/whip/cam", data=pc.localDescription.sdp, headers=headers) as response:
        answer = await response.text()
        assert response.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc


@asynccontextmanager
async def player_page(origin: str, library: Path) -> AsyncIterator[Page]:
    """Chromium at ``origin``/player/, the page and the library served by Playwright."""
    files = {"index.html": (PAGE, "text/html"), "whep.js": (library.read_text(), "text/javascript")}

    async def serve(route: Route) -> None:
        body, content_type = files[route.request.url.rsplit("/", 1)[1] or "index.html"]
        await route.fulfill(body=body, content_type=content_type)

    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS
        )
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.route(f"{origin}/player/*", serve)
            await page.goto(f"{origin}/player/")
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await browser.close()


async def grab(page: Page) -> np.ndarray:
    """The video's current frame (RGB) at its own size."""
    w, h, b64 = await page.evaluate(
        """() => {
            const v = document.getElementById("video");
            const c = document.createElement("canvas");
            c.width = v.videoWidth; c.height = v.videoHeight;
            const ctx = c.getContext("2d");
            ctx.drawImage(v, 0, 0);
            const rgba = ctx.getImageData(0, 0, c.width, c.height).data;
            let s = "";
            for (let i = 0; i < rgba.length; i += 4)
                s += String.fromCharCode(rgba[i], rgba[i + 1], rgba[i + 2]);
            return [c.width, c.height, btoa(s)];
        }"""
    )
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 3)


async def test_a_whep_player_library_plays_the_upscaled_stream() -> None:
    library = node_packages(PLAYER) / "whip-whep" / "whep.js"
    video = SyntheticVideo()  # 64x48
    async with running_server(BicubicEngine("cpu")) as server:
        publisher = await publish(server.http, video)
        try:

            async def live() -> bool:
                samples = await server.scrape()
                return value(samples, "streamvsr_frames_received_total") >= 5

            await wait_until(live, 10, "the server to receive the published video")
            async with player_page(server.url, library) as page:
                assert await page.evaluate("window.viewing") == "viewing"
                await page.wait_for_function("window.presented >= 10", timeout=20_000)
                size = await page.evaluate(
                    "[document.getElementById('video').videoWidth, "
                    "document.getElementById('video').videoHeight]"
                )
                assert size == [4 * 64, 4 * 48], size

                # Moving: more frames are presented, and each grab shows a later sent frame.
                shown = []
                for _ in range(3):
                    presented = await page.evaluate("window.presented")
                    await page.wait_for_function(f"window.presented >= {presented + 10}")
                    index, diff = identify(await grab(page), video)
                    assert diff < 25, (index, diff)
                    shown.append(index)
                assert shown == sorted(shown) and len(set(shown)) == 3, shown
        finally:
            await publisher.close()
