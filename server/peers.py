"""Negotiating peer connections: publishers (browser, WHIP) and viewers (WHEP)."""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.exceptions import OperationError

from .fanout import Fanout
from .ice import advertise_public_ip
from .problems import Problem
from .runtime import Runtime
from .sdp import check_publish_offer, check_view_offer, describe_codecs
from .sessions import Session
from .tracks import UpscaledTrack, deliver_to, pump_video

log = logging.getLogger(__name__)


async def open_publisher(
    rt: Runtime, kind: str, offer: str, stream: str | None = None
) -> tuple[Session, str]:
    """A session whose video the engine upscales; returns it and the SDP answer."""
    check_publish_offer(offer)
    with rt.registry.reservation(publishing=stream if kind == "whip" else None):
        return await _open_publisher(rt, kind, offer, stream)


async def _open_publisher(rt: Runtime, kind: str, offer: str, stream: str | None):
    session = Session(kind, RTCPeerConnection(rt.rtc_config), stream)
    if kind == "browser":  # the upscaled video goes back on the offer's video section
        session.outputs.append(UpscaledTrack(rt.metrics))
        _add_sender(session.pc, session.outputs[0], "sendrecv", rt.settings.video_codec)
    rt.scheduler.add_stream(session.id, deliver_to(session.outputs, rt.metrics), rt.next_seed())

    @session.pc.on("track")
    def on_track(track) -> None:
        if track.kind == "video":
            pump = pump_video(
                track, session.id, rt.scheduler, rt.metrics, rt.input_limits,
                rt.settings.idle_timeout_s, lambda reason: rt.registry.close(session, reason),
            )  # fmt: skip
            session.tasks.append(asyncio.create_task(pump))
        elif kind == "whip":
            session.audio = Fanout(track)
            session.tasks.append(asyncio.create_task(session.audio.run()))
        else:  # a browser's audio is not sent back; it is read so that it does not pile up
            sink = MediaBlackhole()
            sink.addTrack(track)
            session.tasks.append(asyncio.create_task(sink.start()))

    return session, await _answer(rt, session, offer)


async def open_viewer(rt: Runtime, stream: str, offer: str) -> tuple[Session, str]:
    """A WHEP viewer of a live WHIP stream: its upscaled video and its audio."""
    check_view_offer(offer)
    publisher = rt.registry.publisher(stream)
    if publisher is None:
        raise Problem(
            409, "Stream not live", f"stream {stream!r} has no publisher", {"Retry-After": "5"}
        )
    with rt.registry.reservation():
        return await _open_viewer(rt, publisher, offer)


async def _open_viewer(rt: Runtime, publisher: Session, offer: str) -> tuple[Session, str]:
    session = Session("whep", RTCPeerConnection(rt.rtc_config), publisher.stream)
    session.publisher = publisher
    video = UpscaledTrack(rt.metrics)
    session.tracks.append(video)
    if publisher.audio is not None:
        session.tracks.append(publisher.audio.subscribe())
    for track in session.tracks:
        _add_sender(session.pc, track, "sendonly", rt.settings.video_codec)
    answer = await _answer(rt, session, offer)
    publisher.outputs.append(video)
    return session, answer


async def _answer(rt: Runtime, session: Session, offer: str) -> str:
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
        rt.registry.add(session)
    except BaseException:
        await rt.registry.close(session, "negotiation failed")
        raise
    return advertise_public_ip(pc.localDescription.sdp, rt.settings.public_ip)


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
