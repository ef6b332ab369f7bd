"""The codecs our senders use: our preference offered, then what the answer chose."""

from __future__ import annotations

from aiortc import RTCPeerConnection, RTCRtpSender

from .sdp import sending_codecs
from .stream_encoding import ViewerTrack


def add_sender(pc: RTCPeerConnection, track, direction: str, video_codec: str) -> None:
    """A transceiver for ``track``, made before the offer is applied so that the offer's section
    of that kind uses it, and so that our codec preference decides what we encode with."""
    transceiver = pc.addTransceiver(track, direction=direction)
    if track.kind == "video":
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = f"video/{video_codec}"
        transceiver.setCodecPreferences(
            sorted(codecs, key=lambda c: c.mimeType.lower() != preferred)
        )


def use_negotiated_codecs(pc: RTCPeerConnection) -> None:
    """Each viewer track (``Publisher.subscribe``) of ``pc`` takes the frames of its stream's
    encoder for the codec negotiated: the answer's first, whichever side answered. Called once
    the answer is applied."""
    local = pc.localDescription
    answer = local if local.type == "answer" else pc.remoteDescription
    codecs = sending_codecs(answer.sdp)
    for transceiver in pc.getTransceivers():
        track = transceiver.sender.track
        if isinstance(track, ViewerTrack) and transceiver.mid in codecs:
            track.use(codecs[transceiver.mid])
