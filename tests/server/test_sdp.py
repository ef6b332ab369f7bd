"""The checks on incoming SDP offers (server/sdp.py), on hand-written offers."""

from __future__ import annotations

import pytest

from streamvsr.server.problems import Problem
from streamvsr.server.sdp import (
    MediaSection,
    check_publish_offer,
    check_view_offer,
    describe_codecs,
    parse_media,
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
