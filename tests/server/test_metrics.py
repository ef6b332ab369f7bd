"""/metrics, /healthz and /readyz: every metric is there with sane values in base units, no
per-session labels, and readiness follows the engine's loading."""

from __future__ import annotations

import asyncio
import re
import statistics
import time

from support.webrtc import (
    PROBLEM,
    SyntheticVideo,
    histogram_mean,
    histogram_quantile,
    identify,
    make_offer,
    open_browser_peer,
    running_server,
    strip_candidates,
    value,
)

from streamvsr.engine import BicubicEngine
from streamvsr.server.stream_encoding import VIEWER_DEPTH

HEX_ID = re.compile(r"[0-9a-f]{32}")


async def test_metrics_after_a_run() -> None:
    video = SyntheticVideo()
    async with running_server(BicubicEngine("cpu")) as server:
        async with server.http.get("/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "alive"
        status, ready = await server.readyz()
        assert status == 200 and ready["engine"] == "bicubic" and ready["sessions"] == 0

        peer = await open_browser_peer(server.http, video)
        try:
            await peer.collector.wait_video(1)
            await asyncio.sleep(2.0)
            live = await server.scrape()
            status, ready = await server.readyz()
            assert status == 200 and ready["sessions"] == 1
        finally:
            await peer.close()
        await asyncio.sleep(0.5)  # let the last frames and the close settle
        async with server.http.get("/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
        after = await server.scrape()

    # Sessions by kind, every kind present; the browser session counted while live.
    for kind in ("browser", "whip", "whep"):
        assert value(live, "streamvsr_sessions_active", kind=kind) == (kind == "browser")
        assert value(after, "streamvsr_sessions_active", kind=kind) == 0

    received = value(after, "streamvsr_frames_received_total")
    sent = value(after, "streamvsr_frames_sent_total")
    assert received >= 40 and sent >= 40, (received, sent)
    assert sent <= received
    for reason in ("stale", "engine_error", "session_closed", "decode_error", "encoder_busy"):
        assert value(after, "streamvsr_frames_dropped_total", reason=reason) >= 0
    assert value(after, "streamvsr_frames_dropped_total", reason="engine_error") == 0
    assert value(after, "streamvsr_frames_dropped_total", reason="decode_error") == 0

    # Latencies are in seconds: positive, and below what the client measured end to end
    # (which also holds two network hops, two codecs and two jitter buffers).
    client_delays = [
        frame.at - video.sent[identify(frame.image, video)[0]][0] for frame in peer.collector.video
    ]
    end_to_end = statistics.mean(client_delays)
    assert 0 < end_to_end < 1.0
    latency = histogram_mean(after, "streamvsr_frame_latency_seconds")
    assert 0 < latency < end_to_end, (latency, end_to_end)
    # One latency per frame the stream's encoder took; its one viewer's sender got each of them
    # but those still in flight when the session closed (encoding, or queued for the sender).
    encoded = value(after, "streamvsr_frame_latency_seconds_count")
    assert sent <= encoded <= sent + VIEWER_DEPTH, (encoded, sent)
    assert histogram_quantile(after, "streamvsr_frame_latency_seconds", 0.95) <= 0.5
    for name in ("streamvsr_engine_step_seconds", "streamvsr_queue_wait_seconds"):
        assert 0 <= histogram_mean(after, name) < latency + 0.01, name
    assert value(after, "streamvsr_engine_step_seconds_count") >= sent * 0.9
    stages = {lbl["stage"]: v for n, lbl, v in after if n == "streamvsr_engine_stage_seconds_count"}
    assert stages, "no engine stage was timed"
    for stage, count in stages.items():
        assert count >= sent * 0.9, (stage, count)
        assert 0 <= histogram_mean(after, "streamvsr_engine_stage_seconds", stage=stage) < 0.5
    # The stages are parts of the steps.
    stage_total = sum(v for n, _, v in after if n == "streamvsr_engine_stage_seconds_sum")
    assert stage_total <= value(after, "streamvsr_engine_step_seconds_sum") * 1.05 + 0.005
    assert histogram_mean(after, "streamvsr_batch_size") >= 1

    encodes = [
        (lbl["codec"], v) for n, lbl, v in after if n == "streamvsr_encode_seconds_count" and v
    ]
    assert encodes and all(c in ("h264", "vp8") for c, _ in encodes), encodes
    for codec_name, _ in encodes:
        assert 0 < histogram_mean(after, "streamvsr_encode_seconds", codec=codec_name) < 0.5
    # The test's client peer runs in this process, and aiortc's encoder factory (which the
    # server replaces to time its encoders) is process-wide, so the client's encodes are
    # counted too. The server's own encodes must still all be there: one per sent frame.
    assert sum(v for _, v in encodes) >= received + sent - 3, (encodes, received, sent)

    assert value(after, "streamvsr_gpu_memory_bytes") >= 0
    assert value(after, "streamvsr_ready") == 1
    info = value(after, "streamvsr_model_info", engine="bicubic", device="cpu")
    assert info == 1

    # No label carries a session id (unbounded cardinality).
    for name, labels, _ in live + after:
        for label, label_value in labels.items():
            assert peer.session not in label_value, (name, label)
            assert not HEX_ID.search(label_value), (name, label, label_value)


async def test_readyz_while_the_engine_loads(tiny_engine_settings) -> None:
    """Loading Stream-DiffVSR (the tiny checkpoint) happens off the request path: meanwhile
    /readyz and session requests get 503 + Retry-After at once, then the server becomes ready."""
    engine_settings = tiny_engine_settings
    offer = strip_candidates(await make_offer(video="sendonly"))
    async with running_server(
        engine_settings=engine_settings, server={"whip_token": "x"}, wait_ready=None
    ) as server:
        async with server.http.get("/readyz") as response:
            assert response.status == 503
            assert response.content_type == PROBLEM
            assert int(response.headers["Retry-After"]) > 0
        async with server.http.get("/healthz") as response:
            assert response.status == 200  # alive while loading
        started = time.monotonic()
        async with server.http.post(
            "/whip/cam",
            data=offer,
            headers={"Content-Type": "application/sdp", "Authorization": "Bearer x"},
        ) as response:
            assert response.status == 503
            assert response.content_type == PROBLEM
            assert int(response.headers["Retry-After"]) > 0
        async with server.http.post("/offer", json={"type": "offer", "sdp": offer}) as response:
            assert response.status == 503
        assert time.monotonic() - started < 0.5, "a request waited for the engine"
        async with server.http.get("/metrics") as response:
            assert response.status == 200
        samples = await server.scrape()
        assert value(samples, "streamvsr_ready") == 0

        deadline = time.monotonic() + 120
        while (status := (await server.readyz())[0]) != 200 and time.monotonic() < deadline:
            assert status == 503
            await asyncio.sleep(0.1)
        status, ready = await server.readyz()
        assert status == 200, ready
        assert ready["engine"] == "stream-diffvsr"
        samples = await server.scrape()
        assert value(samples, "streamvsr_ready") == 1
        assert value(samples, "streamvsr_model_info", engine="stream-diffvsr") == 1
