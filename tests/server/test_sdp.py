"""The checks on incoming SDP offers (server/sdp.py), on hand-written offers."""

from __future__ import annotations

import pytest

from streamvsr.server.problems import Problem
from streamvsr.server.sdp import (
    MediaSection,
    check_publish_offer,
    check_view_offer,
    describe_codecs,
    ice_credentials,
    media_ids,
    parse_ice_fragment,
    parse_media,
    sha256_fingerprint_only,
)

SESSION = [
    "v=0",
    "o=- 1 1 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    "a=fingerprint:sha-256 AA:BB",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:0123456789abcdef012345",
]
VP8 = ["a=rtpmap:96 VP8/90000"]
H264_BASELINE = [
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
]
OPUS = ["a=rtpmap:111 opus/48000/2"]


def section(kind: str, direction: str | None, codecs: list[str]) -> list[str]:
    lines = [f"m={kind} 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0"]
    return lines + ([f"a={direction}"] if direction else []) + codecs


def offer(*sections: list[str]) -> str:
    return "\r\n".join(SESSION + [line for s in sections for line in s]) + "\r\n"


def h264(profile_level_id: str, mode: str = "1") -> list[str]:
    return [
        "a=rtpmap:102 H264/90000",
        f"a=fmtp:102 packetization-mode={mode};profile-level-id={profile_level_id}",
    ]


def test_parse_media_reads_kind_direction_codecs_and_fmtp() -> None:
    sdp = offer(section("audio", "sendonly", OPUS), section("video", None, VP8 + H264_BASELINE))
    assert parse_media(sdp) == [
        MediaSection("audio", "sendonly", {"111": "OPUS"}),
        MediaSection(
            "video",
            "sendrecv",  # the default without a direction attribute
            {"96": "VP8", "102": "H264"},
            {"102": "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"},
        ),
    ]


def test_parse_media_ignores_session_level_attributes_and_accepts_lf_lines() -> None:
    sdp = offer(section("video", "recvonly", VP8)).replace("\r\n", "\n")
    sdp = sdp.replace("t=0 0", "t=0 0\na=rtpmap:1 BOGUS/1\na=sendonly")
    assert parse_media(sdp) == [MediaSection("video", "recvonly", {"96": "VP8"})]


@pytest.mark.parametrize(
    ("sdp", "detail"),
    [
        ("", "must start with v=0"),
        ('{"type": "offer"}', "must start with v=0"),
        (offer(section("video", None, VP8)).replace("a=fingerprint", "a=x"), "a=fingerprint"),
        (offer(section("video", None, VP8)).replace("a=ice-ufrag", "a=x"), "a=ice-ufrag"),
        (offer(section("video", None, VP8)).replace("a=ice-pwd", "a=x"), "a=ice-pwd"),
    ],
)
def test_malformed_offers_are_400(sdp: str, detail: str) -> None:
    with pytest.raises(Problem) as error:
        parse_media(sdp)
    assert (error.value.status, error.value.title) == (400, "Malformed SDP")
    assert detail in error.value.detail


@pytest.mark.parametrize("direction", ["sendonly", "sendrecv"])
@pytest.mark.parametrize(
    "codecs",
    [VP8, H264_BASELINE, h264("42001f"), h264("42c01f"), h264("42401f"), h264("42801f")],
)
def test_publish_offers_with_a_receivable_codec_pass(direction: str, codecs: list[str]) -> None:
    sdp = offer(section("audio", "sendonly", OPUS), section("video", direction, codecs))
    assert [s.kind for s in check_publish_offer(sdp)] == ["audio", "video"]


@pytest.mark.parametrize(
    ("sdp", "status", "title"),
    [
        (offer(section("audio", "sendonly", OPUS)), 422, "No video in the offer"),
        (offer(section("video", "recvonly", VP8)), 422, "Video is not sent"),
        (offer(section("video", "inactive", VP8)), 422, "Video is not sent"),
        (offer(section("video", "sendonly", h264("640c1f"))), 422, "Unsupported video codec"),
        (offer(section("video", "sendonly", h264("42e01f", "0"))), 422, "Unsupported video codec"),
        (offer(section("video", "sendonly", ["a=rtpmap:98 AV1/90000"])), 422, "Unsupported"),
        (offer(section("video", "sendonly", [])), 422, "Unsupported video codec"),
    ],
)
def test_unusable_publish_offers_are_refused(sdp: str, status: int, title: str) -> None:
    with pytest.raises(Problem) as error:
        check_publish_offer(sdp)
    assert error.value.status == status
    assert error.value.title.startswith(title)


def test_an_unsupported_codec_is_named_with_what_to_change() -> None:
    sdp = offer(section("video", "sendonly", ["a=rtpmap:98 AV1/90000", *h264("640c1f")]))
    with pytest.raises(Problem) as error:
        check_publish_offer(sdp)
    assert "offered video codecs: AV1, H264" in error.value.detail
    assert "profile 'baseline'" in error.value.detail
    with pytest.raises(Problem, match="offered video codecs: none"):
        check_publish_offer(offer(section("video", "sendonly", [])))


def test_only_the_first_video_section_counts() -> None:
    sdp = offer(section("video", "recvonly", VP8), section("video", "sendonly", VP8))
    with pytest.raises(Problem, match="Video is not sent"):
        check_publish_offer(sdp)


@pytest.mark.parametrize("direction", ["recvonly", "sendrecv"])
def test_view_offers_that_receive_video_pass(direction: str) -> None:
    assert [s.direction for s in check_view_offer(offer(section("video", direction, VP8)))] == [
        direction
    ]


@pytest.mark.parametrize(
    "sdp",
    [
        offer(section("audio", "recvonly", OPUS)),
        offer(section("video", "sendonly", VP8)),
        offer(section("video", "inactive", VP8)),
    ],
)
def test_view_offers_without_video_to_receive_are_422(sdp: str) -> None:
    with pytest.raises(Problem) as error:
        check_view_offer(sdp)
    assert (error.value.status, error.value.title) == (422, "No video to receive")


def test_describe_codecs_lists_each_section() -> None:
    sdp = offer(
        section("video", None, H264_BASELINE + VP8 + ["a=rtpmap:97 rtx/90000"]),
        section("audio", None, OPUS),
        section("application", None, []),
    )
    assert describe_codecs(sdp) == "video: H264, RTX, VP8; audio: OPUS; application: none"
    with pytest.raises(Problem):
        describe_codecs("not an offer")


# --- trickle ICE fragments (RFC 8840) ------------------------------------------------------------

HOST = "1 1 udp 2130706431 127.0.0.1 50000 typ host"
SRFLX = "2 1 UDP 1694498815 203.0.113.7 61000 typ srflx raddr 10.0.0.2 rport 50001"


def test_an_ice_fragment_gives_credentials_and_candidates_per_section() -> None:
    fragment = parse_ice_fragment(
        "a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\na=group:BUNDLE 0 1\r\n"
        f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:{HOST}\r\n"
        f"a=candidate:{SRFLX}\r\na=end-of-candidates\r\n"
        "m=video 9 RTP/AVP 0\nc=IN IP4 0.0.0.0\na=mid:1\n"
    )
    assert (fragment.ufrag, fragment.pwd, fragment.end) == ("abcd", "secret", True)
    audio, video = fragment.sections
    assert (audio.index, audio.mid, video.index, video.mid) == (0, "0", 1, "1")
    host, srflx = audio.candidates
    assert (host.ip, host.port, host.type, host.priority) == (
        "127.0.0.1",
        50000,
        "host",
        2130706431,
    )
    assert (srflx.type, srflx.relatedAddress, srflx.relatedPort) == ("srflx", "10.0.0.2", 50001)
    assert video.candidates == []


def test_end_of_candidates_may_be_session_level_and_credentials_media_level() -> None:
    fragment = parse_ice_fragment("a=end-of-candidates\r\n")
    assert fragment.end and fragment.sections == [] and fragment.ufrag is None
    fragment = parse_ice_fragment("m=audio 9 RTP/AVP 0\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n")
    assert (fragment.ufrag, fragment.pwd, fragment.end) == ("u", "p", False)


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host", "Malformed SDP fragment"),
        (f"a=candidate:{HOST}", "Malformed SDP fragment"),  # outside an m= section
        ("a=mid:0", "Malformed SDP fragment"),
        (
            "m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 127.0.0.1 5 host",
            "Malformed ICE candidate",
        ),
        (
            "m=audio 9 RTP/AVP 0\r\na=candidate:1 x udp 1 127.0.0.1 5 typ host",
            "Malformed ICE candidate",
        ),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp", "Malformed ICE candidate"),
        (
            f"m=audio 9 RTP/AVP 0\r\na=candidate:{HOST} raddr 0.0.0.0 rport x",
            "Malformed ICE candidate",
        ),
    ],
)
def test_bad_ice_fragments_are_400(text: str, title: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_ice_fragment(text)
    assert (caught.value.status, caught.value.title) == (400, title)


def test_ice_credentials_and_media_ids_of_an_offer() -> None:
    sdp = offer(
        [*section("audio", "sendonly", OPUS), "a=mid:a"], [*section("video", None, VP8), "a=mid:v"]
    )
    assert ice_credentials(sdp) == ("abcd", "0123456789abcdef012345")
    assert media_ids(sdp) == ["a", "v"]
    assert ice_credentials("v=0\r\n") == (None, None)


def test_answers_keep_only_their_sha256_fingerprints() -> None:
    """aiortc's answers list sha-256, -384 and -512 (session level or per m= section)."""
    prints = ["a=fingerprint:sha-256 AA:BB", "a=fingerprint:sha-384 CC", "a=fingerprint:sha-512 DD"]
    sdp = offer(section("audio", "sendonly", [*OPUS, *prints]), section("video", None, VP8))
    kept = sha256_fingerprint_only(sdp)
    assert [line for line in kept.split("\r\n") if "fingerprint" in line] == [
        "a=fingerprint:sha-256 AA:BB",  # the session's
        "a=fingerprint:sha-256 AA:BB",  # the audio section's
    ]
    assert kept == sdp.replace("a=fingerprint:sha-384 CC\r\n", "").replace(
        "a=fingerprint:sha-512 DD\r\n", ""
    )


def test_an_answer_without_a_sha256_fingerprint_is_left_alone() -> None:
    sdp = offer(section("video", None, [*VP8, "a=fingerprint:sha-512 DD"])).replace(
        "a=fingerprint:sha-256 AA:BB\r\n", ""
    )
    assert "sha-256" not in sdp
    assert sha256_fingerprint_only(sdp) == sdp
    assert sha256_fingerprint_only(sdp.replace("\r\n", "\n")) == sdp.replace("\r\n", "\n")
