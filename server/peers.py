"""Negotiating peer connections: the browser page and WHIP publishers (upscaled by the engine),
and WHEP viewers."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import OperationError

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


async def open_browser(rt: Runtime, offer: str) -> tuple[BrowserSession, str]:
    """The page's session; returns it and the SDP answer."""
    check_publish_offer(offer)
    with rt.registry.reservation():
        session = BrowserSession(PeerConnection(rt.rtc_config), Publisher(rt.metrics))
        # The upscaled video goes back on the offer's video section.
        _add_sender(session.pc, session.output, "sendrecv", rt.settings.video_codec)
        return session, await _open_upscaled(rt, session, offer)


async def open_whip(rt: Runtime, stream: str, offer: str) -> tuple[WhipSession, str]:
    """A WHIP publisher of ``stream``; returns it and the SDP answer."""
    check_publish_offer(offer)
    with rt.registry.reservation(publishing=stream):
        session = WhipSession(PeerConnection(rt.rtc_config), Publisher(rt.metrics), stream)
        return session, await _open_upscaled(rt, session, offer)


async def _open_upscaled(rt: Runtime, session: UpscaledSession, offer: str) -> str:
    rt.scheduler.add_source(session.id, deliver_to(session.publisher, rt.metrics), rt.next_seed())

    @session.pc.on("track")
    def on_track(track) -> None:
        if track.kind != "video":
            session.receive_audio(track)
            return
        pump = pump_video(
            track, session.id, rt.scheduler, rt.metrics, rt.input_limits,
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
    with rt.registry.reservation():
        session = WhepSession(PeerConnection(rt.rtc_config), source)
        for track in session.tracks:
            _add_sender(session.pc, track, "sendonly", rt.settings.video_codec)
        return session, await _answer(rt, session, offer)


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
            raise Problem(400, "Unusable SDP offer", str(exc) or type(exc).__name__) from exc
        await pc.setLocalDescription(await pc.createAnswer())
    except BaseException:
        await rt.registry.close(session, "negotiation failed")
        raise
    if session.closed:  # a viewer whose stream ended meanwhile
        raise Problem(409, "Stream not live", f"{session} ended while it was negotiated")
    rt.registry.add(session)
    # Else libdatachannel peers (OBS, WHEP players) fail DTLS now and then.
    answer = sha256_fingerprint_only(pc.localDescription.sdp)
    return advertise_public_ip(answer, rt.settings.public_ip)


def _add_sender(pc: RTCPeerConnection, track, direction: str, video_codec: str) -> None:
    """A transceiver for ``track``, made before the offer is applied so that the offer's section
    of that kind uses it, and so that our codec preference decides what we encode with."""
    transceiver = pc.addTransceiver(track, direction=direction)
    if track.kind == "video":
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = f"video/{video_codec}"
        transceiver.setCodecPreferences(
            sorted(codecs, key=lambda c: c.mimeType.lower() != preferred)
        )
