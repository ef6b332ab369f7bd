"""H.264 encoder choice (NVENC when it opens, else x264) and the encoders' output.

These run without a GPU: the real NVENC probe fails here, so ``auto`` must fall back to x264.
"""

from __future__ import annotations

import logging

import av
import pytest

from streamvsr.bench.encoder_speed import textured_frames
from streamvsr.config import ConfigError, Settings, load_settings
from streamvsr.server import encoders as encoding
from streamvsr.server.encoders import NVENC, X264, EncoderSettings, TunedH264Encoder


@pytest.fixture
def fresh_probe():
    """Probe NVENC anew in the test, and leave no (possibly faked) result behind for others."""
    encoding.nvenc_unavailable.cache_clear()
    yield
    encoding.nvenc_unavailable.cache_clear()


@pytest.fixture
def no_nvenc(fresh_probe) -> str:
    reason = encoding.nvenc_unavailable()
    if reason is None:
        pytest.skip("NVENC opens on this machine")
    return reason


def test_auto_falls_back_to_x264_when_nvenc_cannot_open(no_nvenc, caplog) -> None:
    assert no_nvenc.startswith(f"{NVENC} could not be opened") or "no h264_nvenc" in no_nvenc
    with caplog.at_level(logging.INFO, logger="streamvsr.server.encoders"):
        assert encoding.select_h264_encoder("auto") == X264
    (message,) = [r.getMessage() for r in caplog.records if r.name == "streamvsr.server.encoders"]
    assert X264 in message and "auto" in message and no_nvenc in message


def test_x264_is_used_when_asked_without_probing(fresh_probe, monkeypatch) -> None:
    monkeypatch.setattr(encoding, "_try_nvenc", lambda: pytest.fail("probed NVENC"))
    assert encoding.select_h264_encoder("x264") == X264


def test_nvenc_required_but_unavailable_is_a_config_error(no_nvenc) -> None:
    with pytest.raises(ConfigError, match=r"server\.h264_encoder is nvenc") as error:
        encoding.select_h264_encoder("nvenc")
    assert no_nvenc in str(error.value) and "\n" not in str(error.value)


def test_the_server_refuses_to_start_without_required_nvenc(no_nvenc) -> None:
    from streamvsr.server.app import create_app

    settings = load_settings(overrides={"server": {"h264_encoder": "nvenc"}})
    with pytest.raises(ConfigError, match=r"server\.h264_encoder"):
        create_app(settings)


def test_the_probe_runs_once_per_process(fresh_probe, monkeypatch) -> None:
    calls = []

    def failing_probe() -> None:
        calls.append(1)
        raise RuntimeError("no GPU")

    monkeypatch.setattr(encoding, "_try_nvenc", failing_probe)
    for _ in range(3):
        assert encoding.select_h264_encoder("auto") == X264
    with pytest.raises(ConfigError):
        encoding.select_h264_encoder("nvenc")
    assert len(calls) == 1


def test_nvenc_is_chosen_and_configured_for_webrtc_when_it_opens(fresh_probe, monkeypatch) -> None:
    monkeypatch.setattr(encoding, "_try_nvenc", lambda: None)
    assert encoding.select_h264_encoder("auto") == NVENC
    assert encoding.select_h264_encoder("nvenc") == NVENC
    encoder = TunedH264Encoder(EncoderSettings(h264_codec=NVENC, start_bitrate=5_000_000))
    codec = encoder._open(1280, 720)  # not opened: that needs the GPU
    assert codec.name == NVENC and (codec.width, codec.height) == (1280, 720)
    options = codec.options
    assert options["profile"] == "baseline" and options["level"] == "3.1"
    assert options["preset"] in {"p1", "p2", "p3", "p4"} and options["tune"] in {"ll", "ull"}
    assert options["forced-idr"] == "1" and options["bf"] == "0" and options["delay"] == "0"
    assert options["maxrate"] == options["bufsize"] == "5000000"


def test_this_ffmpeg_accepts_the_nvenc_options(no_nvenc) -> None:
    """FFmpeg parses the options before it looks for a GPU: a bad name or value is EINVAL."""
    codec = encoding.h264_context(NVENC, 1280, 720, 4_000_000)
    with pytest.raises(Exception) as error:
        codec.open()
    assert not isinstance(error.value, av.error.ArgumentError), error.value


def _frames(count: int) -> list[av.VideoFrame]:
    return textured_frames(1280, 720, count)


def test_x264_encoder_makes_decodable_baseline_h264_at_720p() -> None:
    encoder = TunedH264Encoder(EncoderSettings(x264_preset="ultrafast"))
    decoder = av.CodecContext.create("h264", "r")
    decoded, nal_types = [], []
    for n, frame in enumerate(_frames(4)):
        nals = list(encoder._encode_frame(frame, force_keyframe=n in (0, 2)))
        assert nals, f"frame {n} gave no NAL units"
        nal_types.append({nal[0] & 0x1F for nal in nals})
        if n == 0:
            sps = next(nal for nal in nals if nal[0] & 0x1F == 7)
            assert sps[1] == 66  # profile_idc: Baseline (what WebRTC's 42e01f asks for)
        stream = b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)
        decoded += decoder.decode(av.Packet(stream))
    decoded += decoder.decode(None)
    assert encoder.codec.name == X264
    assert {5, 7, 8} <= nal_types[0] and 5 in nal_types[2]  # IDR (+SPS/PPS) when asked
    assert 5 not in nal_types[1]
    assert len(decoded) == 4 and all((f.width, f.height) == (1280, 720) for f in decoded)


def test_h264_encoder_setting_is_validated() -> None:
    assert Settings().server.h264_encoder == "auto"
    assert load_settings().server.h264_encoder == "auto"
    settings = load_settings(env={"STREAMVSR_SERVER__H264_ENCODER": "x264"})
    assert settings.server.h264_encoder == "x264"
    with pytest.raises(ConfigError, match=r"server\.h264_encoder must be one of auto, x264, nvenc"):
        load_settings(overrides={"server": {"h264_encoder": "qsv"}})


def test_h264_encoder_flag() -> None:
    from streamvsr.cli import build_parser
    from streamvsr.flags import settings_from_args

    args = build_parser().parse_args(["serve", "--h264-encoder", "nvenc"])
    assert settings_from_args(args).server.h264_encoder == "nvenc"
