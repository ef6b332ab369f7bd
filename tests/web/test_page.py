"""The browser page (``web/``) in real Chromium, driven by Playwright, against the server running in
this process on 127.0.0.1 (bicubic engine unless said otherwise).

Chromium's fake camera plays a Y4M clip that the tests write: four coloured blocks on top (to check
that the output shows the camera's picture) and a white bar moving across a grey band below (to
check that the output keeps moving). Chromium is Debian's package at /usr/bin/chromium (Playwright
never downloads a browser here); without it these tests are skipped.

A screenshot of the running page goes to $STREAMVSR_ARTIFACTS (default tests/artifacts/).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Page, async_playwright
from support.browser import CHROMIUM, CHROMIUM_FLAGS, needs_chromium
from support.webrtc import (
    SyntheticVideo,
    open_browser_peer,
    running_server,
    wait_until,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server.access import hash_token
from streamvsr.server.http import RUNTIME

pytestmark = [needs_chromium, pytest.mark.usefixtures("loopback_ice")]

ARTIFACTS = Path(os.environ.get("STREAMVSR_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")
BASE_FLAGS = [*CHROMIUM_FLAGS, "--use-fake-device-for-media-stream"]
ACCEPT_CAMERA = "--use-fake-ui-for-media-stream"  # answers the permission prompt with "allow"

# The fake camera's clip: 640x360 at 30 fps, 60 frames (Chromium loops it).
CLIP_W, CLIP_H, CLIP_FPS, CLIP_FRAMES = 640, 360, 30, 60
BAND = 240  # rows above: four still colour blocks; rows below: grey with a moving white bar
COLOURS = {  # (x, y) centre as fractions of the frame -> RGB
    (0.25, 1 / 6): (210, 40, 40),
    (0.75, 1 / 6): (40, 190, 60),
    (0.25, 0.5): (40, 60, 210),
    (0.75, 0.5): (220, 200, 40),
}
GREY, WHITE = 70, 235
BAR_W, BAR_STEP = 32, 11


def clip_frame(n: int) -> np.ndarray:
    img = np.empty((CLIP_H, CLIP_W, 3), np.uint8)
    half_w, half_band = CLIP_W // 2, BAND // 2
    for (fx, fy), rgb in COLOURS.items():
        x0 = 0 if fx < 0.5 else half_w
        y0 = 0 if fy < 1 / 3 else half_band
        img[y0 : y0 + half_band, x0 : x0 + half_w] = rgb
    img[BAND:] = GREY
    x = (n * BAR_STEP) % (CLIP_W - BAR_W)
    img[BAND:, x : x + BAR_W] = WHITE
    return img


def write_y4m(path: Path) -> None:
    """I420 (BT.601, limited range) with a ``C420`` header, as Chromium's fake camera wants."""
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{CLIP_W} H{CLIP_H} F{CLIP_FPS}:1 Ip A1:1 C420\n".encode())
        for n in range(CLIP_FRAMES):
            rgb = clip_frame(n).astype(np.float32)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
            u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
            v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

            def sub(p: np.ndarray) -> np.ndarray:
                return p.reshape(CLIP_H // 2, 2, CLIP_W // 2, 2).mean(axis=(1, 3))

            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(plane.round().clip(0, 255).astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(path)
    return path


@contextlib.asynccontextmanager
async def browser_page(
    url: str, clip: Path, camera_allowed: bool = True, init_script: str | None = None
) -> AsyncIterator[Page]:
    """A Chromium page at ``url`` with the clip as its camera. JavaScript errors fail the test."""
    flags = [*BASE_FLAGS, f"--use-file-for-fake-video-capture={clip}"]
    if camera_allowed:
        flags.append(ACCEPT_CAMERA)
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=flags, headless=True
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            if init_script:
                await context.add_init_script(init_script)
            page = await context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(url + "/")
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await browser.close()


async def start(page: Page, resolution: str = "320x180") -> None:
    await page.select_option("#resolution", resolution)
    await page.click("#start")


async def wait_output_width(page: Page, width: int, timeout: float = 20.0) -> None:
    await page.wait_for_function(
        f"document.getElementById('output').videoWidth === {width}", timeout=timeout * 1000
    )


async def grab(page: Page, video_id: str, step: int = 4) -> np.ndarray:
    """The video element's current frame (RGB), every ``step``-th pixel each way."""
    data = await page.evaluate(
        """([id, step]) => {
            const v = document.getElementById(id);
            const w = Math.floor(v.videoWidth / step), h = Math.floor(v.videoHeight / step);
            const c = document.createElement("canvas");
            c.width = w; c.height = h;
            const ctx = c.getContext("2d");
            ctx.imageSmoothingEnabled = false;
            ctx.drawImage(v, 0, 0, w, h);
            const rgba = ctx.getImageData(0, 0, w, h).data;
            let s = "";
            for (let i = 0; i < rgba.length; i += 4)
                s += String.fromCharCode(rgba[i], rgba[i + 1], rgba[i + 2]);
            return [w, h, btoa(s)];
        }""",
        [video_id, step],
    )
    w, h, b64 = data
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 3)


def check_picture(image: np.ndarray) -> None:
    """The clip's picture: not black, the four colour blocks where they belong."""
    h, w, _ = image.shape
    assert image.mean() > 40, f"the output is (nearly) black: mean {image.mean():.1f}"
    for (fx, fy), rgb in COLOURS.items():
        y, x = int(fy * h), int(fx * w)
        patch = image[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).mean(axis=0)
        assert np.abs(patch - rgb).max() < 45, (f"colour at {fx, fy}", patch.round(), rgb)


def motion(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels in the moving band that changed a lot between two frames."""
    h = a.shape[0]
    band = slice(int(h * BAND / CLIP_H) + 2, h)
    diff = np.abs(a[band].astype(int) - b[band].astype(int)).max(axis=2)
    return float((diff > 60).mean())


async def stats(page: Page) -> dict[str, str]:
    return await page.evaluate(
        """() => Object.fromEntries(
            [...document.querySelectorAll("#stats dd")].map((d) => [d.dataset.stat, d.textContent])
        )"""
    )


def number(text: str) -> float:
    match = re.search(r"-?\d+(?:\.\d+)?", text)
    assert match, f"no number in {text!r}"
    return float(match.group())


async def notice(page: Page) -> str:
    return "" if await page.is_hidden("#notice") else await page.inner_text("#notice-text")


async def save_screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


# --- tests ---------------------------------------------------------------------------------------


async def test_output_is_4x_the_input_and_keeps_playing(clip: Path) -> None:
    async with (
        running_server(BicubicEngine("cpu")) as server,
        browser_page(server.url, clip) as page,
    ):
        await start(page, "320x180")
        await wait_output_width(page, 4 * 320)
        assert await page.evaluate("document.getElementById('output').videoHeight") == 4 * 180
        # What is sent is exactly the chosen size (the camera is 640x360).
        assert await page.evaluate("document.getElementById('input').videoWidth") == 320

        await check_playing(page, 6)

        # The bicubic fallback is announced, with the server's reason.
        await page.wait_for_selector("#engine-notice", state="visible")
        engine_notice = await page.inner_text("#engine-notice")
        assert "bicubic" in engine_notice.lower() and "given by the test" in engine_notice

        # A screenshot once the stats are in.
        await page.wait_for_function(
            "/\\d/.test(document.getElementById('stat-latency').textContent)", timeout=10_000
        )
        shot = await save_screenshot(page, "page.png")
        Path("/tmp/streamvsr_page.png").write_bytes(shot.read_bytes())

        # Compare view: one stage, the browser-scaled input wiped over the output by the slider.
        await page.check("#compare")
        assert await page.is_visible("#compare-input")
        assert await page.is_hidden("#input-panel")
        await page.fill("#split", "30")
        clip_path = await page.evaluate(
            "getComputedStyle(document.getElementById('compare-input')).clipPath"
        )
        assert "70%" in clip_path, clip_path
        await save_screenshot(page, "page-compare.png")

        # True size: the output at its own pixel size, in a scrollable stage.
        await page.uncheck("#compare")
        await page.check("#truesize")
        box = await page.evaluate(
            """() => {
                const s = document.getElementById("stage");
                const r = document.getElementById("output").getBoundingClientRect();
                return [r.width * devicePixelRatio, r.height * devicePixelRatio,
                        s.scrollWidth > s.clientWidth];
            }"""
        )
        assert box == [1280, 720, True], box
        await check_playing(page, 3)  # still live, seconds later


async def check_playing(page: Page, count: int) -> None:
    """Consecutive output frames show the clip, 1280x720, and differ (the bar moves)."""
    frames = []
    for _ in range(count):
        frames.append(await grab(page, "output"))
        await asyncio.sleep(0.25)
    assert {f.shape for f in frames} == {(180, 320, 3)}  # 1280x720 at every 4th pixel
    for frame in frames:
        check_picture(frame)
    moved = [motion(a, b) for a, b in itertools.pairwise(frames)]
    assert min(moved) > 0.005, f"the output froze: changed shares {moved}"
    assert not await page.evaluate("document.getElementById('output').paused")


async def test_stats_panel_shows_live_numbers(clip: Path) -> None:
    async with (
        running_server(BicubicEngine("cpu")) as server,
        browser_page(server.url, clip) as page,
    ):
        await start(page, "160x90")
        await wait_output_width(page, 4 * 160)
        await page.wait_for_function(
            "/\\d/.test(document.getElementById('stat-latency').textContent)", timeout=10_000
        )
        samples = [await stats(page)]
        for _ in range(2):
            await asyncio.sleep(1.2)
            samples.append(await stats(page))

    for sample in samples:
        assert sample["input-res"] == "160×90", sample
        assert sample["output-res"] == "640×360", sample
        assert sample["engine"] == "bicubic", sample
        assert sample["codec"] in ("H264", "VP8", "VP9", "AV1"), sample
        latency = number(sample["latency"])
        assert 10 < latency < 3000, sample
        assert 0 <= number(sample["server-latency"]) < 1000, sample
        assert number(sample["fps-in"]) > 5 and number(sample["fps-out"]) > 3, sample
        assert number(sample["bitrate-down"]) > 0 and number(sample["bitrate-up"]) > 0, sample
        assert number(sample["dropped"]) >= 0 and "server" in sample["dropped"], sample
        assert number(sample["rtt"]) >= 0, sample
        # The breakdown names the parts of the estimate, which add up to it.
        parts = dict(re.findall(r"(\w+) (\d+)", sample["breakdown"]))
        assert set(parts) == {"capture", "encode", "network", "server", "receive", "display"}
        assert abs(sum(map(int, parts.values())) - latency) <= len(parts), sample
    # Updated every second: each read differs from the one before.
    for first, second in itertools.pairwise(samples):
        changed = [
            k
            for k in ("latency", "fps-in", "fps-out", "bitrate-down", "bitrate-up", "breakdown")
            if first[k] != second[k]
        ]
        assert len(changed) >= 2, (first, second)


async def test_server_busy_is_shown_and_retry_works(clip: Path) -> None:
    async with running_server(BicubicEngine("cpu"), server={"max_sessions": 1}) as server:
        other = await open_browser_peer(server.http, SyntheticVideo(), keep_images=False)
        async with browser_page(server.url, clip) as page:
            try:
                await start(page, "160x90")
                await page.wait_for_function(
                    "document.getElementById('notice-text').textContent.includes('Server busy')",
                    timeout=10_000,
                )
                assert await page.is_visible("#retry")
                assert await page.evaluate("document.getElementById('output').videoWidth") == 0
            finally:
                await other.close()
            # Once the slot is free, Retry connects.
            await wait_until(
                lambda: _sessions(server, 0), 10, "the other session to be closed", interval=0.1
            )
            await page.click("#retry")
            await wait_output_width(page, 4 * 160)
            assert "busy" not in (await notice(page)).lower()


async def test_page_asks_for_a_token_when_upscaling_needs_one(clip: Path) -> None:
    token = "page-secret-token"
    users = [
        {"name": "cam", "token": hash_token(token), "permissions": ["upscale"]},
        {"name": "any", "ips": ["127.0.0.1"], "permissions": ["api", "metrics"]},
    ]
    async with (
        running_server(BicubicEngine("cpu"), server={"users": users}) as server,
        browser_page(server.url, clip) as page,
    ):
        assert not await page.is_visible("#token")
        await start(page, "160x90")
        await page.wait_for_function(
            "document.getElementById('notice-text').textContent.includes('access token')",
            timeout=10_000,
        )
        await page.fill("#token", token)
        await page.click("#retry")
        await wait_output_width(page, 4 * 160)
        assert "token" not in (await notice(page)).lower()


async def _sessions(server, count: int) -> bool:
    status, body = await server.readyz()
    return status == 200 and body["sessions"] == count


async def test_not_ready_is_shown_then_the_page_connects_by_itself(
    clip: Path, tiny_engine_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real slow start: the tiny Stream-DiffVSR checkpoint loads on the CPU. The load is held
    until the page has shown "not ready", so that a fast load cannot win the race."""
    import streamvsr.server.app as app_module

    release = threading.Event()
    real_create_engines = app_module.create_engines

    def held_create_engines(settings):
        release.wait(60)
        return real_create_engines(settings)

    monkeypatch.setattr(app_module, "create_engines", held_create_engines)
    engine_settings = tiny_engine_settings
    try:
        async with (
            running_server(engine_settings=engine_settings, wait_ready=None) as server,
            browser_page(server.url, clip) as page,
        ):
            assert (await server.readyz())[0] == 503
            await start(page, "160x90")
            await page.wait_for_function(
                "document.getElementById('notice-text').textContent.includes('not ready')",
                timeout=10_000,
            )
            release.set()
            text = await notice(page)
            assert "Retrying automatically" in text, text
            # No click: the page retries until the engine is loaded, then connects.
            await page.wait_for_function(
                "document.getElementById('stat-engine').textContent === 'stream-diffvsr'",
                timeout=40_000,
            )
            assert "not ready" not in await notice(page)
            assert await page.is_hidden("#engine-notice")  # no bicubic notice for the real model
            assert (await server.readyz())[0] == 200
    finally:
        release.set()  # the loader thread must not wait on after a failure


async def test_camera_permission_denied_is_explained(clip: Path) -> None:
    async with (
        running_server(BicubicEngine("cpu")) as server,
        browser_page(server.url, clip, camera_allowed=False) as page,
    ):
        await start(page)
        await page.wait_for_selector("#notice", state="visible")
        await page.wait_for_function(
            "document.getElementById('notice-text').textContent.includes('permission')",
            timeout=10_000,
        )
        assert "denied" in await notice(page)
        assert await page.is_enabled("#start")  # the user can try again
        assert (await server.readyz())[1]["sessions"] == 0


async def test_unsupported_browser_is_explained(clip: Path) -> None:
    async with (
        running_server(BicubicEngine("cpu")) as server,
        browser_page(server.url, clip, init_script="delete window.RTCPeerConnection;") as page,
    ):
        await page.wait_for_selector("#notice", state="visible")
        assert "does not support WebRTC" in await notice(page)
        assert await page.is_disabled("#start")


async def test_connection_lost_is_shown_and_retry_reconnects(clip: Path) -> None:
    async with (
        running_server(BicubicEngine("cpu")) as server,
        browser_page(server.url, clip) as page,
    ):
        await start(page, "160x90")
        await wait_output_width(page, 4 * 160)
        session_id = await page.evaluate("document.body.dataset.session")
        registry = server.app[RUNTIME].registry
        session = registry.get(session_id)
        assert session is not None
        await registry.close(session, "closed by the test")  # as when the server ends it

        await page.wait_for_function(
            "document.getElementById('notice-text').textContent.includes('Connection lost')",
            timeout=15_000,
        )
        assert "the server ended this session" in await notice(page)
        assert await page.is_visible("#retry")
        await page.click("#retry")
        await page.wait_for_function(
            f"document.body.dataset.session && document.body.dataset.session !== '{session_id}'",
            timeout=10_000,
        )
        await wait_output_width(page, 4 * 160)
        before = await grab(page, "output")
        await asyncio.sleep(0.5)
        assert motion(before, await grab(page, "output")) > 0.005, "no live video after Retry"
