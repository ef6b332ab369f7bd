"""A seeded fuzz run of hostile requests: mutated SDP offers, JSON bodies, trickle fragments and
headers against /offer, WHIP and WHEP. Every one must get an answer in time, and no 5xx."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter

import aiohttp
import yarl
from support.webrtc import make_offer, running_server, strip_candidates

from streamvsr.engine import BicubicEngine
from streamvsr.server.http import RUNTIME

SEED = 20261205
CASES = 500
REQUEST_TIMEOUT_S = 10  # per request: longer is a hang
BUDGET_S = 60
TOKEN = "t0ken"
INTERNALS = re.compile(r"NoneType|object has no attribute|Traceback|not in list|\.py\b")
JUNK = ["\x00", "\r", "\n", "\u00e9", "\ud800", "\ufeff", " ", ":", "=", "%", "9" * 400, "-1"]


def mutate_text(rng: random.Random, text: str) -> str:
    """One to three random edits of SDP-like text: lines dropped, doubled, swapped or cut, junk
    inserted, a field replaced."""
    lines = text.split("\r\n")
    for _ in range(rng.randint(1, 3)):
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        edit = rng.randrange(7)
        if edit == 0:
            del lines[i]
        elif edit == 1:
            lines.insert(i, lines[j])
        elif edit == 2:
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif edit == 4:
            at = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:at] + rng.choice(JUNK) + lines[i][at:]
        elif edit == 5:
            words = lines[i].split(" ")
            words[rng.randrange(len(words))] = rng.choice(JUNK)
            lines[i] = " ".join(words)
        else:
            lines[i] = lines[i][:2] + rng.choice(["mid:", "setup:", "rtpmap:", "ice-ufrag:"])
        if not lines:
            lines = [""]
    return "\r\n".join(lines)


def mutate_json(rng: random.Random, sdp: str) -> str | bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return json.dumps({"type": "offer", "sdp": mutate_text(rng, sdp)})
    if choice == 1:
        value = rng.choice([None, 1, [], {}, "x" * 10, True, 1e308])
        return json.dumps({"type": rng.choice(["offer", value]), "sdp": rng.choice([sdp, value])})
    if choice == 2:
        return json.dumps({"type": "offer", "sdp": sdp})[: rng.randrange(10, len(sdp))]
    if choice == 3:
        return "[" * rng.randint(100, 5000) + "]" * rng.randint(0, 10)
    if choice == 4:
        return '{"type": "offer", "sdp": 1' + "0" * rng.randint(4000, 6000) + "}"
    return rng.randbytes(rng.randint(0, 300))


def mutate_headers(rng: random.Random, content_type: str) -> dict[str, str]:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"}
    if rng.random() < 0.3:
        headers["Content-Type"] += rng.choice(
            ["; charset=utf-16", "; charset=klingon", "; charset=rot13", "; charset=", ";;", "ä"]
        )
    if rng.random() < 0.2:
        headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "br", "zstd", "x", "gzip, x"])
    if rng.random() < 0.2:
        headers["Authorization"] = rng.choice(
            ["Bearer t\u00f6ken", "Bearer", "Basic x", "B" * 9000]
        )
    return headers


def stream_name(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return "cam"
    return rng.choice(["%00", "%0d%0a", "a%2Fb", "..", "x" * 70, "%C3%A9", "a%20b", "%ff"])


class Fuzzer:
    def __init__(self, server, offers: dict[str, str], whip_location: str) -> None:
        self.server, self.offers, self.whip_location = server, offers, whip_location
        self.statuses: Counter[int] = Counter()

    def request(self, rng: random.Random) -> tuple[str, str, str | bytes, dict[str, str]]:
        kind = rng.choice(["offer", "whip", "whep", "patch"])
        if kind == "offer":
            body = mutate_json(rng, self.offers["offer"])
            return "POST", "/offer", body, mutate_headers(rng, "application/json")
        if kind == "patch":
            fragment = mutate_text(rng, self.offers["whip"])
            headers = mutate_headers(rng, "application/trickle-ice-sdpfrag")
            return "PATCH", self.whip_location, fragment, headers
        body: str | bytes = mutate_text(rng, self.offers[kind])
        if rng.random() < 0.1:
            body = body.encode(rng.choice(["utf-16", "utf-32", "latin-1"]), "replace")
        headers = mutate_headers(rng, "application/sdp")
        return "POST", f"/{kind}/{stream_name(rng)}", body, headers

    async def send(self, http, method: str, path: str, body, headers) -> None:
        url = yarl.URL(self.server.url + path, encoded=True)
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        async with http.request(method, url, data=body, headers=headers) as response:
            text = await response.text(errors="replace")
            assert response.status < 500, (method, path, headers, body[:300], text)
            if response.status >= 400:
                assert response.content_type == "application/problem+json", text
                assert not INTERNALS.search(text), text  # says what was wrong, not our code's
            self.statuses[response.status] += 1
            await self.end_session(http, response, text)

    async def end_session(self, http, response, text: str) -> None:
        """Close what a mutated offer opened anyway, so that the session limit stays far."""
        if response.status == 201:
            async with http.delete(self.server.url + response.headers["Location"]):
                pass
        elif response.status == 200 and response.url.path == "/offer":
            registry = self.server.app[RUNTIME].registry
            session = registry.get(json.loads(text)["session"])
            if session is not None:
                await registry.close(session, "fuzzed")


async def base_offers() -> dict[str, str]:
    return {
        "offer": await make_offer(video="sendrecv", audio="sendrecv"),
        "whip": strip_candidates(await make_offer(video="sendonly", audio="sendonly")),
        "whep": await make_offer(video="recvonly", audio="recvonly"),
    }


async def publish(server, offer: str) -> str:
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    async with server.http.post("/whip/cam", data=offer, headers=headers) as response:
        assert response.status == 201, await response.text()
        return response.headers["Location"]


async def test_fuzzed_requests_never_get_a_5xx_or_hang() -> None:
    rng = random.Random(SEED)
    settings = {"whip_token": TOKEN, "max_sessions": 64, "request_timeout_s": 2}
    async with running_server(BicubicEngine("cpu"), server=settings) as server:
        offers = await base_offers()
        fuzzer = Fuzzer(server, offers, await publish(server, offers["whip"]))
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            for _ in range(CASES):
                method, path, body, headers = fuzzer.request(rng)
                await asyncio.wait_for(fuzzer.send(http, method, path, body, headers),
                                       REQUEST_TIMEOUT_S)  # fmt: skip
        elapsed = time.monotonic() - started
        assert (await server.readyz())[0] == 200
    assert sum(fuzzer.statuses.values()) == CASES
    assert elapsed < BUDGET_S, elapsed
    print(f"{CASES} fuzzed requests in {elapsed:.1f} s: {dict(sorted(fuzzer.statuses.items()))}")
