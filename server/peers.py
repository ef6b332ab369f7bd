"""Negotiating peer connections: the browser page and WHIP publishers (upscaled by the engine),
and WHEP viewers."""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import OperationError

from .codec_choice import add_sender, use_negotiated_codecs
from .egress import start_configured
from .ice import advertise_public_ip
from .problems import Problem
from .publisher import Publisher
from .runtime import Runtime
from .sdp import (
    check_publish_offer,
    check_view_offer,
    describe_codecs,
    sha256_fingerprint_only,
)
from .sessions import (
    BrowserSession,
    PeerConnection,
    PeerSession,
    UpscaledSession,
    WhepSession,
    WhipSession,
)
from .tracks import deliver_to, pump_video

log = logging.getLogger(__name__)


async def open_browser(rt: Runtime, offer: str) -> tuple[BrowserSession, str]:
    """The page's session; returns it and the SDP answer."""
    check_publish_offer(offer)
    with rt.registry.reservation():
        session = BrowserSession(PeerConnection(rt.rtc_config), Publisher(rt.metrics, rt.encoders))
        # The upscaled video goes back on the offer's video section.
        add_sender(session.pc, session.output, "sendrecv", rt.settings.video_codec)
        return session, await _open_upscaled(rt, session, offer)


async def open_whip(rt: Runtime, stream: str, offer: str) -> tuple[WhipSession, str]:
    """A WHIP publisher of ``stream``; returns it and the SDP answer."""
    check_publish_offer(offer)
    with rt.registry.reservation(publishing=stream):
        session = WhipSession(
            PeerConnection(rt.rtc_config), Publisher(rt.metrics, rt.encoders), stream
        )
        answer = await _open_upscaled(rt, session, offer)
        # Its recording and RTMP forwards, once its tracks (audio too) are known; they end with it.
        start_configured(rt, session)
        return session, answer


async def _open_upscaled(rt: Runtime, session: UpscaledSession, offer: str) -> str:
    rt.scheduler.add_source(session.id, deliver_to(session.publisher, rt.metrics), rt.next_seed())

    @session.pc.on("track")
    def on_track(track) -> None:
        if track.kind != "video":
            session.receive_audio(track)
            return
        pump = pump_video(
            track, session.id, rt.scheduler, session.publisher, rt.metrics, rt.input_limits,
            rt.settings.idle_timeout_s, lambda reason: rt.registry.close(session, reason),
        )  # fmt: skip
        session.tasks.append(asyncio.create_task(pump))

    return await _answer(rt, session, offer)


async def open_whep(rt: Runtime, stream: str, offer: str) -> tuple[WhepSession, str]:
    """A WHEP viewer of a live WHIP stream: its upscaled video and its audio."""
    check_view_offer(offer)
    source = rt.registry.source_of(stream)
    if source is None:
        raise Problem(
            409, "Stream not live", f"stream {stream!r} has no publisher", {"Retry-After": "5"}
        )
    with rt.registry.reservation(viewing=stream):
        session = WhepSession(PeerConnection(rt.rtc_config), source)
        for track in session.tracks:
            add_sender(session.pc, track, "sendonly", rt.settings.video_codec)
        if rt.settings.viewer_timeout_s:
            _watch_when_connected(rt, session)
        return session, await _answer(rt, session, offer)


def _watch_when_connected(rt: Runtime, session: WhepSession) -> None:
    @session.pc.on("connectionstatechange")
    def on_state() -> None:
        if session.pc.connectionState == "connected" and not session.closed:
            watchdog = _close_if_silent(rt, session, rt.settings.viewer_timeout_s)
            session.tasks.append(asyncio.create_task(watchdog))


async def _close_if_silent(rt: Runtime, session: WhepSession, timeout_s: float) -> None:
    """Close a viewer from which nothing arrives for ``timeout_s``: live receivers send RTCP
    receiver reports about every second, but a dead one's encoder would run on until ICE consent
    expires (~30 s). Counted in the DTLS transport's received packets, as its stats report them."""
    loop = asyncio.get_running_loop()
    received, heard_at = None, loop.time()
    while True:
        await asyncio.sleep(min(1.0, timeout_s / 4))
        now_received = await _packets_received(session.pc)
        if now_received != received:
            received, heard_at = now_received, loop.time()
        elif loop.time() - heard_at > timeout_s:
            await rt.registry.close(session, f"nothing received for {timeout_s:g} s")
            return


async def _packets_received(pc: RTCPeerConnection) -> int:
    stats = (await pc.getStats()).values()
    return sum(s.packetsReceived for s in stats if s.type == "transport")


async def _answer(rt: Runtime, session: PeerSession, offer: str) -> str:
    """Apply the offer, answer it and register the session; on any failure undo everything."""
    pc = session.pc

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await rt.registry.close(session, f"connection {pc.connectionState}")

    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except OperationError as exc:  # nothing in the offer that aiortc can negotiate
            raise Problem(
                422, "Unusable SDP offer",
                f"{exc}; offered codecs: {describe_codecs(offer)}. streamvsr receives VP8 or "
                "H.264 Constrained Baseline (packetization-mode=1) video and Opus audio.",
            ) from exc  # fmt: skip
        except Exception as exc:  # a malformed offer: aiortc's parser raises various types
            raise _unusable(exc, parsing=True) from exc
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # e.g. a=mid lines that aiortc cannot match up
            raise _unusable(exc, parsing=False) from exc
        use_negotiated_codecs(pc)
    except BaseException:
        await _discard(rt, session)
        raise
    if session.closed:  # a viewer whose stream ended meanwhile
        raise Problem(409, "Stream not live", f"{session} ended while it was negotiated")
    rt.registry.add(session)
    session.tasks.append(asyncio.create_task(_close_unless_connected(rt, session)))
    # Else libdatachannel peers (OBS, WHEP players) fail DTLS now and then.
    answer = sha256_fingerprint_only(pc.localDescription.sdp)
    return advertise_public_ip(answer, rt.settings.public_ip)


def _unusable(exc: Exception, parsing: bool) -> Problem:
    """A 400 for an offer that aiortc could not apply or answer. Only the ValueErrors of its SDP
    parser are about the offer; other errors ('NoneType' object has no attribute ...) would show
    the client our internals."""
    log.debug("could not negotiate an offer", exc_info=exc)
    if parsing and type(exc) is ValueError and str(exc):
        return Problem(400, "Unusable SDP offer", f"malformed SDP: {str(exc)[:200]}")
    return Problem(
        400, "Unusable SDP offer",
        "could not negotiate the offer: check its m= sections and their a=mid lines",
    )  # fmt: skip


async def _discard(rt: Runtime, session: PeerSession) -> None:
    """Undo a failed negotiation. A half-negotiated peer may fail to close as well: the client
    is told about its offer, not about that."""
    try:
        await rt.registry.close(session, "negotiation failed")
    except Exception:
        log.debug("closing %s after a failed negotiation failed too", session, exc_info=True)


async def _close_unless_connected(rt: Runtime, session: PeerSession) -> None:
    """A session whose ICE and DTLS do not connect in time holds a place that others need."""
    timeout_s = rt.settings.handshake_timeout_s
    await asyncio.sleep(timeout_s)
    if session.pc.connectionState != "connected":
        await rt.registry.close(session, f"not connected within {timeout_s:g} s")
