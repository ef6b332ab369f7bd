"""Checks on incoming SDP offers, so that unusable offers get a 4xx that says what to change."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiortc import RTCIceCandidate
from aiortc.sdp import SessionDescription, candidate_from_sdp

from .problems import Problem

# H.264 profiles aiortc negotiates: Constrained Baseline (42e0xx / 42c0xx) and Baseline (4200xx).
_BASELINE = re.compile(r"profile-level-id=(42[0-9a-f]{2}[0-9a-f]{2})", re.IGNORECASE)


@dataclass
class MediaSection:
    kind: str
    direction: str = "sendrecv"
    codecs: dict[str, str] = field(default_factory=dict)  # payload type -> codec name
    fmtp: dict[str, str] = field(default_factory=dict)  # payload type -> parameters


def parse_media(sdp: str) -> list[MediaSection]:
    """The m= sections of an SDP with their direction, codecs and fmtp lines."""
    if not sdp.lstrip().startswith("v=0"):
        raise Problem(400, "Malformed SDP", "the body is not an SDP offer (it must start with v=0)")
    for attribute in ("a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"):
        if attribute not in sdp:
            raise Problem(
                400, "Malformed SDP", f"the offer has no {attribute[:-1]} line (WebRTC needs it)"
            )
    sections: list[MediaSection] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append(MediaSection(kind=line[2:].split(" ", 1)[0]))
        elif not sections:
            continue
        elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            sections[-1].direction = line[2:]
        elif line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:") :].partition(" ")
            sections[-1].codecs[pt] = rest.split("/", 1)[0].upper()
        elif line.startswith("a=fmtp:"):
            pt, _, params = line[len("a=fmtp:") :].partition(" ")
            sections[-1].fmtp[pt] = params
    return sections


def _receivable(section: MediaSection) -> list[str]:
    usable = []
    for pt, name in section.codecs.items():
        if name == "VP8":
            usable.append(name)
        elif name == "H264":
            params = section.fmtp.get(pt, "")
            profile = _BASELINE.search(params)
            baseline = profile and profile.group(1)[2:4].lower() in ("00", "e0", "c0", "40", "80")
            if baseline and "packetization-mode=1" in params:
                usable.append(name)
    return usable


def check_publish_offer(sdp: str) -> list[MediaSection]:
    """An offer that sends us video we can decode (browser sendrecv or WHIP sendonly)."""
    sections = parse_media(sdp)
    videos = [s for s in sections if s.kind == "video"]
    if not videos:
        raise Problem(
            422, "No video in the offer", "the offer has no m=video section: send a video track"
        )
    video = videos[0]
    if video.direction not in ("sendonly", "sendrecv"):
        raise Problem(422, "Video is not sent", f"the video section is {video.direction}")
    if not _receivable(video):
        offered = ", ".join(sorted(set(video.codecs.values()))) or "none"
        raise Problem(
            422,
            "Unsupported video codec",
            f"offered video codecs: {offered}. streamvsr receives VP8, or H.264 Constrained "
            "Baseline with packetization-mode=1. In OBS: Settings > Output > Video Encoder: "
            "x264 (or another H.264 encoder) with profile 'baseline'; not AV1 or HEVC.",
        )
    return sections


def check_view_offer(sdp: str) -> list[MediaSection]:
    """A WHEP offer: it must be able to receive video."""
    sections = parse_media(sdp)
    videos = [s for s in sections if s.kind == "video"]
    if not videos or videos[0].direction not in ("recvonly", "sendrecv"):
        raise Problem(422, "No video to receive", "a WHEP offer needs a recvonly m=video section")
    return sections


def describe_codecs(sdp: str) -> str:
    """'video: H264, VP8; audio: OPUS' for error messages."""
    sections = parse_media(sdp)
    return "; ".join(
        f"{s.kind}: {', '.join(sorted(set(s.codecs.values()))) or 'none'}" for s in sections
    )


def sha256_fingerprint_only(sdp: str) -> str:
    """``sdp`` without its non-sha-256 ``a=fingerprint`` lines (unchanged if it has no sha-256 one),
    as browsers answer. libdatachannel (OBS, WHEP players) keeps only an answer's last fingerprint,
    and when ICE connects before it has applied the answer its DTLS expects a sha-256 one: after
    aiortc's sha-256/384/512, ~10-15 % of its connections whose offer had candidates failed."""
    kept = [line for line in sdp.splitlines(keepends=True) if not _other_fingerprint(line)]
    if not any(line.startswith("a=fingerprint:") for line in kept):
        return sdp
    return "".join(kept)


def _other_fingerprint(line: str) -> bool:
    return line.startswith("a=fingerprint:") and not line.lower().startswith(
        "a=fingerprint:sha-256 "
    )


# --- trickle ICE (RFC 8840 SDP fragments, sent by WHIP/WHEP clients in PATCH, RFC 9725) ---------

_SDP_LINE = re.compile(r"^[a-z]=")


@dataclass
class FragmentSection:
    index: int  # of the m= line in the fragment
    mid: str | None = None
    candidates: list[RTCIceCandidate] = field(default_factory=list)


@dataclass
class IceFragment:
    ufrag: str | None = None
    pwd: str | None = None
    sections: list[FragmentSection] = field(default_factory=list)
    end: bool = False  # a=end-of-candidates, at session or (any) media level


def parse_ice_fragment(text: str) -> IceFragment:
    """An ``application/trickle-ice-sdpfrag`` body: its ICE credentials and, per m= section, its
    mid, candidates and end-of-candidates; 400 when it is not one."""
    fragment = IceFragment()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not _SDP_LINE.match(line):
            raise Problem(400, "Malformed SDP fragment", f"not an SDP line: {line[:80]!r}")
        if line.startswith("m="):
            fragment.sections.append(FragmentSection(len(fragment.sections)))
        elif line.startswith("a="):
            _read_attribute(fragment, line)
    return fragment


def _read_attribute(fragment: IceFragment, line: str) -> None:
    name, _, value = line[2:].partition(":")
    if name == "ice-ufrag":
        fragment.ufrag = value
    elif name == "ice-pwd":
        fragment.pwd = value
    elif name == "end-of-candidates":
        fragment.end = True
    elif name in ("mid", "candidate"):
        if not fragment.sections:
            raise Problem(400, "Malformed SDP fragment", f"{line[:80]!r} is outside an m= section")
        if name == "mid":
            fragment.sections[-1].mid = value
        else:
            fragment.sections[-1].candidates.append(_candidate(value))


def _candidate(value: str) -> RTCIceCandidate:
    """foundation component transport priority address port typ type [...] (RFC 8839)."""
    bits = value.split()
    try:
        if len(bits) < 8 or bits[6] != "typ":
            raise ValueError
        return candidate_from_sdp(value)
    except ValueError:
        raise Problem(400, "Malformed ICE candidate", f"a=candidate:{value[:120]}") from None


def ice_credentials(sdp: str) -> tuple[str | None, str | None]:
    """The first a=ice-ufrag and a=ice-pwd of an SDP."""
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)
    pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.MULTILINE)
    return (ufrag and ufrag.group(1)), (pwd and pwd.group(1))


def media_ids(sdp: str) -> list[str]:
    """The a=mid values of an SDP, in m= line order."""
    return re.findall(r"^a=mid:(\S+)", sdp, re.MULTILINE)


def sending_codecs(sdp: str) -> dict[str, str]:
    """The codec (mime type) each m= section of our own description sends with, by mid: its
    first codec, as aiortc's senders use it."""
    description = SessionDescription.parse(sdp)
    return {
        media.rtp.muxId: media.rtp.codecs[0].mimeType.lower()
        for media in description.media
        if media.rtp.codecs and media.rtp.muxId
    }
