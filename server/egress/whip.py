"""A WHIP forward: a stream's upscaled video and its audio sent on by WebRTC to a WHIP endpoint
(RFC 9725: another streamvsr, MediaMTX, a platform's ingest), as a WHEP viewer gets them.

The server is the WHIP client here: an aiortc peer connection (the server's ICE settings: ICE
servers, host addresses, UDP ports, public IP) with the subscription's tracks, sendonly; its
offer, with every candidate (aiortc gathers them at once), is POSTed to the endpoint, following
307/308 redirects; the 201's ``Location`` is the session, sent a DELETE when the forward ends. A
target that refuses, answers badly or whose connection fails is retried with the RTMP forward's
backoff. Credentials in the URL are sent, never shown: ``https://user:password@host/...`` as
Basic, ``https://:token@host/...`` (no user name) as a Bearer token.

The subscription is the WebRTC one (``Publisher.subscribe``): its tracks are per-subscriber
mailboxes that the sender reads, so a slow target never holds back the engine or the live
session. A closed connection stops its tracks, so each connection leaves a fresh subscription to
the next; one is held all along, so that the end of the stream is seen while retrying too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from yarl import URL

from ..codec_choice import add_sender, use_negotiated_codecs
from ..ice import advertise_public_ip
from ..sdp import sha256_fingerprint_only
from ..sessions import PeerConnection
from .base import Egress
from .metrics import EgressMetrics
from .push import message
from .targets import forward_url, redact

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..sessions import WhipSession

log = logging.getLogger(__name__)

SDP = "application/sdp"
POST_TIMEOUT_S = 10.0  # the offer's POST, redirects included
DELETE_TIMEOUT_S = 3.0
MAX_REDIRECTS = 5
MAX_RETRY_AFTER_S = 300.0


class WhipError(Exception):
    """A WHIP connection that failed; the message says why, without secrets. ``retry_after``:
    the seconds a busy target (429, 503) asked to wait before trying again."""

    def __init__(self, text: str, retry_after: float | None = None):
        super().__init__(text)
        self.retry_after = retry_after


class WhipForward(Egress):
    kind = "whip"
    title = "WHIP forward"

    def __init__(self, url: str, session: WhipSession, rt: Runtime, metrics: EgressMetrics):
        self.url = forward_url(url)
        self._endpoint = Endpoint(url)
        self._publisher = session.publisher
        self._source = session
        self._rt = rt
        self._tracks: list[MediaStreamTrack] = []
        self._tracks_lost = asyncio.Event()
        self.frames = 0
        self._subscribe()
        self._http: aiohttp.ClientSession | None = None
        super().__init__(session.stream, session.id, metrics)

    @property
    def target(self) -> str:
        return redact(self.url)

    def describe(self) -> dict[str, Any]:
        audio = any(t.kind == "audio" for t in self._tracks)
        return {**super().describe(), "frames": self.frames, "audio": audio}

    def _sent(self) -> None:
        """A frame went to the connection's sender."""
        self.frames += 1
        self.metrics.frames.labels(self.kind).inc()

    def _subscribe(self) -> None:
        """A new subscription in place of the last one (none once the stream has ended: its
        publisher would never end it)."""
        if self._source.closed:
            self._ended.set()
            return
        old, self._tracks = self._tracks, self._publisher.subscribe()
        lost = self._tracks_lost = asyncio.Event()
        tracks = self._tracks
        video = next(t for t in tracks if t.kind == "video")
        video.on("ended", lambda: self._video_ended(tracks, lost))
        video.on_sent = self._sent
        self._publisher.unsubscribe(old)

    def _video_ended(self, tracks: list[MediaStreamTrack], lost: asyncio.Event) -> None:
        """The stream has ended (or ``stop`` ended the subscription), or a connection's sender
        stopped its track (its transport closed)."""
        if tracks is not self._tracks:
            return  # an earlier subscription, let go of
        if self._source.closed:
            self._ended.set()
        lost.set()

    def _end(self) -> None:
        self._ended.set()
        self._publisher.unsubscribe(self._tracks)

    def _finish(self) -> None:
        self._publisher.unsubscribe(self._tracks)

    async def _serve(self) -> None:
        async with aiohttp.ClientSession() as self._http:
            await self._keep_connected(self._connect)

    async def _connect(self) -> None:
        """One connection, until the stream ends (returns) or it fails (raises)."""
        settings = self._rt.settings
        pc = PeerConnection(self._rt.rtc_config)
        connected, broken, lost = asyncio.Event(), asyncio.Event(), self._tracks_lost

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                broken.set()

        session: URL | None = None
        try:
            for track in self._tracks:
                add_sender(pc, track, "sendonly", settings.video_codec)
            await pc.setLocalDescription(await pc.createOffer())
            offer = sha256_fingerprint_only(pc.localDescription.sdp)
            session, answer = await self._endpoint.offer(
                self._http, advertise_public_ip(offer, settings.public_ip)
            )
            try:
                await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            except Exception as exc:
                raise WhipError(f"unusable SDP answer: {message(exc)}") from exc
            use_negotiated_codecs(pc)  # the video track takes its stream's encoder for the codec
            timeout = settings.handshake_timeout_s
            await _first([connected, broken, lost, self._ended], timeout)
            if connected.is_set() and not self._ended.is_set():
                self._set_state("running")
                log.info("%s: connected", self)
                await _first([broken, lost, self._ended])
            if self._ended.is_set():
                return
            if broken.is_set():
                raise WhipError(f"the connection {pc.connectionState}")
            if lost.is_set():  # its sender stopped: the transport closed
                raise WhipError("the target closed the connection")
            raise WhipError(f"not connected within {timeout:g} s")
        finally:
            if not self._ended.is_set():
                self._subscribe()  # closing the connection stops the tracks it sends
            await pc.close()
            if session is not None:
                await self._endpoint.delete(self._http, session, str(self))

    def _error_text(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            text = f"no answer within {POST_TIMEOUT_S:g} s"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            text = f"cannot connect to {exc.host}:{exc.port}: {_reason(exc.os_error)}"
        else:
            text = message(exc)
        return self._endpoint.hide_secrets(text)


class Endpoint:
    """A WHIP endpoint's HTTP side: the offer's POST and the session's DELETE, with the URL's
    credentials as the Authorization header (kept across redirects, as OBS does)."""

    def __init__(self, url: str):
        parts = URL(url)
        self.url = parts.with_user(None)
        # What errors must not show (a shorter one would only mangle them).
        self._secrets = [s for s in (parts.password, parts.query_string) if s and len(s) >= 4]
        self._headers = {}
        if parts.password is not None and not parts.user:
            self._headers["Authorization"] = f"Bearer {parts.password}"
        elif parts.user:
            auth = aiohttp.BasicAuth(parts.user, parts.password or "")
            self._headers["Authorization"] = auth.encode()

    def hide_secrets(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def offer(self, http: aiohttp.ClientSession, sdp: str) -> tuple[URL, str]:
        """POST the offer; returns the session's URL and the answer."""
        url = self.url
        headers = {**self._headers, "Content-Type": SDP}
        async with asyncio.timeout(POST_TIMEOUT_S):
            for _ in range(MAX_REDIRECTS + 1):
                async with http.post(
                    url, data=sdp, headers=headers, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in (307, 308) and location:
                        url = url.join(URL(location))  # the same POST again, there
                        continue
                    if response.status != 201:
                        raise WhipError(await _refusal(response), _retry_after(response))
                    if not location:
                        raise WhipError("the target answered 201 without a Location")
                    return url.join(URL(location)), await response.text()
        raise WhipError(f"more than {MAX_REDIRECTS} redirects")

    async def delete(self, http: aiohttp.ClientSession, session: URL, name: str) -> None:
        """End the session at the target; a failure is only logged (it times out there)."""
        try:
            async with asyncio.timeout(DELETE_TIMEOUT_S):
                async with http.delete(
                    session, headers=self._headers, allow_redirects=False
                ) as response:
                    if response.status >= 300:
                        log.info("%s: DELETE of its session answered %d", name, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("%s: DELETE of its session failed: %s", name, self.hide_secrets(message(exc)))


def _reason(error: OSError) -> str:
    """Why a connect failed: "Connection refused" rather than asyncio's "Connect call failed
    (address)"; a name that does not resolve (negative errno) as the resolver says."""
    return os.strerror(error.errno) if (error.errno or 0) > 0 else error.strerror or str(error)


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """A busy target's ``Retry-After`` in seconds (the HTTP-date form is not used by WHIP
    servers), at most ``MAX_RETRY_AFTER_S``."""
    value = response.headers.get("Retry-After", "")
    if response.status not in (429, 503) or not value.strip().isdigit():
        return None
    return min(float(value), MAX_RETRY_AFTER_S)


async def _refusal(response: aiohttp.ClientResponse) -> str:
    """Why the target refused the offer: its status, and its problem's title and detail."""
    text = f"the target answered {response.status} {response.reason or ''}".rstrip()
    said: list[str] = []
    if response.content_type in ("application/problem+json", "application/json"):
        try:
            problem = await response.json(content_type=None)
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            said = [str(problem[k]) for k in ("title", "detail") if problem.get(k)]
    elif response.content_type == "text/plain":
        said = (await response.text(errors="replace")).strip().splitlines()[:1]
    return f"{text}: {' - '.join(said)}"[:300] if said else text


async def _first(events: Iterable[asyncio.Event], timeout: float | None = None) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` has passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
