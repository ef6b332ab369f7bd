"""Clients that declare a body and trickle it: refused with 408 after ``request_timeout_s``
instead of holding a connection and a handler for as long as they like."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from support.webrtc import LOOPBACK, running_server

from streamvsr.engine import BicubicEngine
from streamvsr.server.settings import ServerSettings, positive_seconds

TIMEOUT_S = 1.0


async def trickle(port: int, path: str, content_type: str) -> tuple[float, bytes, float]:
    """Declare 65000 bytes, send one every 0.2 s; returns when the 408 came, the response, and
    when the server closed the connection."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 65000\r\n\r\n"
    )
    writer.write(head.encode())
    started = time.monotonic()

    async def drip() -> None:
        while True:
            writer.write(b"v")
            await asyncio.sleep(0.2)

    dripping = asyncio.create_task(drip())
    try:
        response = await asyncio.wait_for(reader.read(4096), 5)
        answered = time.monotonic() - started
        while await asyncio.wait_for(reader.read(4096), 15):  # lingering close: bounded
            pass
        return answered, response, time.monotonic() - started
    finally:
        dripping.cancel()
        writer.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/offer", "application/json"), ("/whip/cam", "application/sdp"),
     ("/whep/cam", "application/sdp")],
)  # fmt: skip
async def test_a_trickled_body_gets_408_and_the_connection_closes(path, content_type) -> None:
    settings = {"request_timeout_s": TIMEOUT_S}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        port = server.runner.addresses[0][1]
        results = await asyncio.gather(*(trickle(port, path, content_type) for _ in range(20)))
        for answered, response, closed in results:
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), response
            assert b"application/problem+json" in head
            assert json.loads(body)["status"] == 408
            assert TIMEOUT_S <= answered < TIMEOUT_S + 2
            assert closed < TIMEOUT_S + 12  # aiohttp's lingering close reads for 10 s at most
        status, ready = await server.readyz()
        assert status == 200 and ready["sessions"] == 0


def test_request_timeout_must_be_positive() -> None:
    assert ServerSettings().request_timeout_s == 10
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError):
            positive_seconds(bad)
