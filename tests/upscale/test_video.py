"""``streamvsr upscale`` on video files: 4x H.264 MP4 with the source's frame rate, timestamps and
audio (copied or transcoded to AAC), frame ranges, PNG frames, size options, summaries, and
Ctrl-C leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.media import (
    BICUBIC,
    FPS,
    SAMPLE_RATE,
    RecordingEngine,
    make_clip,
    nearest_frames,
    read_png,
    read_video,
    rms,
    tiny_flags,
    tree,
)

from streamvsr.cli import main
from streamvsr.engine import BicubicEngine
from streamvsr.upscale import UpscaleOptions, run_upscale
from streamvsr.upscale.sources import FrameRange

CLIP_FRAMES = 50  # 2 s at 25 fps
SHORT_FRAMES = 15  # 0.6 s: the tiny engine takes ~0.3 s a frame on one CPU thread
LR_HEIGHT, LR_WIDTH = 32, 48


@pytest.fixture(scope="module")
def clip_frames(make_frames) -> list[np.ndarray]:
    """Two seconds of a textured scene panning 2 px right and 1 px down per frame (no frame
    repeats, so each frame can be told from its neighbours)."""
    return make_frames(CLIP_FRAMES, LR_HEIGHT, LR_WIDTH, seed=3, velocity=(1, 2))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, clip_frames) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "mp4": make_clip(root / "clip.mp4", clip_frames),  # H.264 + AAC: audio copied
        "short": make_clip(root / "short.mp4", clip_frames[:SHORT_FRAMES]),  # for the tiny engine
        "mov-pcm": make_clip(root / "pcm.mov", clip_frames, audio="pcm_s16le"),
        "mkv-pcm": make_clip(
            root / "pcm.mkv", clip_frames, audio="pcm_s16le", container_format="matroska"
        ),
        "silent": make_clip(root / "silent.mp4", clip_frames[:10], audio=None),
    }


def upscale(*args: str) -> int:
    return main(["upscale", *map(str, args)])


def assert_h264_mp4(path: Path) -> None:
    assert path.read_bytes()[4:8] == b"ftyp"  # an ISO-BMFF (MP4) file
    video = read_video(path)
    assert "mp4" in video.container
    assert (video.codec, video.pix_fmt) == ("h264", "yuv420p")


def test_tiny_engine_keeps_size_rate_timestamps_and_audio(
    clips, tiny_checkpoint: Path, raft_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    code = upscale(clips["short"], "-o", out, "--quiet", *tiny_flags(tiny_checkpoint, raft_weights))
    assert code == 0
    source, result = read_video(clips["short"]), read_video(out)
    assert_h264_mp4(out)
    assert (result.width, result.height) == (4 * LR_WIDTH, 4 * LR_HEIGHT)
    assert len(result.frames) == len(source.frames) == SHORT_FRAMES
    assert result.rate == FPS
    assert result.times == pytest.approx([n / FPS for n in range(SHORT_FRAMES)], abs=1e-3)
    assert result.duration == pytest.approx(SHORT_FRAMES / FPS, abs=1e-3)
    assert result.container_duration == pytest.approx(SHORT_FRAMES / FPS, abs=1 / FPS)
    assert result.audio is not None and source.audio is not None
    assert result.audio.codec == "aac"
    assert (result.audio.sample_rate, result.audio.channels) == (SAMPLE_RATE, 2)
    assert result.audio.duration == pytest.approx(source.audio.duration, abs=1 / FPS)
    assert result.audio.duration == pytest.approx(SHORT_FRAMES / FPS, abs=1 / FPS)


def test_bicubic_output_moves_with_the_source_and_keeps_the_audio_in_sync(
    clips, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    assert upscale(clips["mp4"], "-o", out, "--quiet", *BICUBIC) == 0
    source, result = read_video(clips["mp4"]), read_video(out)
    assert_h264_mp4(out)
    assert (result.width, result.height) == (4 * LR_WIDTH, 4 * LR_HEIGHT)
    assert len(result.frames) == CLIP_FRAMES and result.rate == FPS
    assert result.duration == pytest.approx(2.0, abs=1e-3)
    # Every output frame, scaled back down, looks most like the source frame at its position.
    assert nearest_frames(result.frames, source.frames) == list(range(CLIP_FRAMES))
    assert result.audio.codec == "aac" and result.audio.sample_rate == SAMPLE_RATE
    assert result.audio.duration == pytest.approx(source.audio.duration, abs=1 / FPS)
    for begin in (0.5, 1.0, 1.6):  # the tone gets louder with time: same loudness = same place
        expected = rms(source.audio, begin, begin + 0.2)
        assert rms(result.audio, begin, begin + 0.2) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize(
    "clip",
    ["mov-pcm", "mkv-pcm"],
)
def test_audio_the_mp4_cannot_hold_is_transcoded_to_aac(clips, clip: str, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    source = read_video(clips[clip])
    assert source.audio.codec == "pcm_s16le"
    assert upscale(clips[clip], "-o", out, "--quiet", *BICUBIC) == 0
    result = read_video(out)
    assert_h264_mp4(out)
    assert len(result.frames) == CLIP_FRAMES and result.rate == FPS
    assert (result.width, result.height) == (4 * LR_WIDTH, 4 * LR_HEIGHT)
    assert result.audio.codec == "aac"
    assert (result.audio.sample_rate, result.audio.channels) == (SAMPLE_RATE, 2)
    assert result.audio.duration == pytest.approx(source.audio.duration, abs=1 / FPS)
    for begin in (0.5, 1.0, 1.6):
        expected = rms(source.audio, begin, begin + 0.2)
        assert rms(result.audio, begin, begin + 0.2) == pytest.approx(expected, rel=0.1)


def test_audio_stays_in_sync_when_the_video_starts_after_the_audio(
    clip_frames, tmp_path: Path
) -> None:
    """The video's first frame is at 0.48 s, the audio starts at 0 (as in MPEG-TS files and
    edited MP4s): in the output, the sound at time t must be the source's at 0.48 s + t."""
    clip = make_clip(tmp_path / "late.mkv", clip_frames, container_format="matroska",
                     video_delay=12)  # fmt: skip
    source = read_video(clip)
    assert source.times[0] == pytest.approx(0.48, abs=1e-3) and source.audio.start == 0
    out = tmp_path / "out.mp4"
    assert upscale(clip, "-o", out, "--quiet", *BICUBIC) == 0
    result = read_video(out)
    assert len(result.frames) == CLIP_FRAMES and result.times[0] == 0
    for begin in (0.3, 1.0):
        expected = rms(source.audio, source.times[0] + begin, source.times[0] + begin + 0.1)
        assert rms(result.audio, begin, begin + 0.1) == pytest.approx(expected, rel=0.1)


def test_default_output_is_beside_the_input(clips, tmp_path: Path) -> None:
    clip = tmp_path / "holiday.mp4"
    clip.write_bytes(clips["silent"].read_bytes())
    assert upscale(clip, "--quiet", *BICUBIC) == 0
    assert tree(tmp_path) == ["holiday.mp4", "holiday_x4.mp4"]
    assert len(read_video(tmp_path / "holiday_x4.mp4").frames) == 10


def test_video_without_audio_gives_video_only(clips, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    assert upscale(clips["silent"], "-o", out, "--quiet", *BICUBIC) == 0
    result = read_video(out)
    assert len(result.frames) == 10 and result.audio is None


@pytest.mark.parametrize(
    ("flags", "first", "count"),
    [
        (["--start", "10", "--end", "30"], 10, 20),
        (["--start", "5", "--max-frames", "12"], 5, 12),
        (["--end", "7"], 0, 7),
        (["--start", "42", "--max-frames", "20"], 42, 8),  # clipped at the end of the clip
    ],
)
def test_frame_range_selects_frames_and_trims_the_audio(
    clips, flags: list[str], first: int, count: int, tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    assert upscale(clips["mp4"], "-o", out, "--quiet", *flags, *BICUBIC) == 0
    source, result = read_video(clips["mp4"]), read_video(out)
    assert len(result.frames) == count
    assert nearest_frames(result.frames, source.frames) == list(range(first, first + count))
    assert result.times[0] == pytest.approx(0.0, abs=1e-3)  # the output starts at 0
    assert result.duration == pytest.approx(count / FPS, abs=1e-3)
    assert result.audio is not None and result.audio.sample_rate == SAMPLE_RATE
    assert result.audio.duration == pytest.approx(count / FPS, abs=1.5 / FPS)
    assert result.audio.start == pytest.approx(0.0, abs=1 / FPS)
    # The audio starts where the video does: its loudness at output time t is the source's at
    # first / FPS + t.
    offset = first / FPS
    for begin in (0.05, count / FPS - 0.1):
        expected = rms(source.audio, offset + begin, offset + begin + 0.05)
        assert rms(result.audio, begin, begin + 0.05) == pytest.approx(expected, rel=0.15)


def test_save_frames_writes_pngs_next_to_the_mp4_and_json_lists_both(
    clips, clip_frames, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "film.mp4"
    code = upscale(
        clips["mp4"], "-o", out, "--save-frames", "--max-frames", "6", "--json", *BICUBIC
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["frames"] == 6 and summary["sequences"] == 1
    frames_dir = tmp_path / "film_frames"
    assert summary["outputs"] == [str(out), str(frames_dir)]
    pngs = sorted(frames_dir.iterdir())
    assert len(pngs) == 6 and all(p.suffix == ".png" for p in pngs)
    assert sorted(tree(tmp_path)) == sorted(["film.mp4", "film_frames", *(
        f"film_frames/{p.name}" for p in pngs)])  # fmt: skip
    video = read_video(out)
    for png, decoded in zip(pngs, video.frames):
        pixels = read_png(png)
        assert pixels.shape == (4 * LR_HEIGHT, 4 * LR_WIDTH, 3)
        # The PNG is the frame the MP4 holds, before lossy encoding.
        assert np.abs(pixels.astype(int) - decoded.astype(int)).mean() < 4
    assert nearest_frames([read_png(p) for p in pngs], clip_frames) == list(range(6))


@pytest.mark.parametrize(
    ("flags", "size"),
    [
        (["--input-size", "24x16"], (96, 64)),
        (["--input-size", "20x14", "--filter", "area"], (80, 56)),
        (["--output-size", "100x60", "--filter", "bilinear"], (100, 60)),
        (["--input-size", "24x16", "--output-size", "320x200"], (320, 200)),
    ],
)
def test_size_options_change_the_video_size(
    clips, flags: list[str], size: tuple[int, int], tmp_path: Path
) -> None:
    out = tmp_path / "out.mp4"
    assert upscale(clips["mp4"], "-o", out, "--quiet", "--max-frames", "5", *flags, *BICUBIC) == 0
    result = read_video(out)
    assert (result.width, result.height) == size
    assert len(result.frames) == 5


def test_quiet_prints_nothing_and_default_prints_a_summary(
    clips, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.mp4"
    assert upscale(clips["silent"], "-o", out, "--quiet", *BICUBIC) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "upscaling" not in captured.err  # no progress bar either
    assert out.is_file()

    assert upscale(clips["silent"], "-o", out, "--overwrite", *BICUBIC) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    assert "upscaled 10 frames" in lines[0] and str(out) in lines[0]


def test_json_prints_one_summary_line(clips, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.mp4"
    assert upscale(clips["silent"], "-o", out, "--json", *BICUBIC) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["frames"] == 10
    assert summary["sequences"] == 1
    assert summary["outputs"] == [str(out)]
    assert summary["engine"] == "bicubic"


# --- the temporal chain ----------------------------------------------------------------------


def test_video_runs_one_unbroken_chain(load_tiny, make_frames, tmp_path: Path) -> None:
    frames = make_frames(6, 16, 16, seed=5)
    clip = make_clip(tmp_path / "in.mp4", frames)
    engine = RecordingEngine(load_tiny(flow_resolution="lr"))
    summary = run_upscale(engine, UpscaleOptions([clip], output=tmp_path / "out.mp4", quiet=True))
    assert summary["frames"] == 6
    assert all(len(step.sessions) == 1 for step in engine.steps)  # one frame per step
    assert engine.per_session() == {0: list(range(6))}  # one session, indices 0..5 in order
    # Only the first frame starts a chain; every later one continues the previous frame's state.
    assert [step.fresh[0] for step in engine.steps] == [True] + [False] * 5
    assert len(read_video(tmp_path / "out.mp4").frames) == 6


def test_video_range_chain_starts_at_the_first_chosen_frame(clips, tmp_path: Path) -> None:
    engine = RecordingEngine(BicubicEngine("cpu"))
    options = UpscaleOptions(
        [clips["mp4"]], output=tmp_path / "out.mp4", frames=FrameRange(20, 26), quiet=True
    )
    run_upscale(engine, options)
    assert engine.per_session() == {0: list(range(6))}


# --- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_in_video_mode_leaves_no_output(clips, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    engine = RecordingEngine(BicubicEngine("cpu"), interrupt_after=3)
    options = UpscaleOptions(
        [clips["mp4"]], output=out_dir / "film.mp4", save_frames=True, quiet=True
    )
    with pytest.raises(KeyboardInterrupt):
        run_upscale(engine, options)
    assert engine.frames_done == 3  # it was interrupted in the middle
    assert tree(out_dir) == []  # no film.mp4, no film_frames, no hidden partial files


def test_ctrl_c_keeps_an_existing_video_output_intact(clips, tmp_path: Path) -> None:
    out = tmp_path / "film.mp4"
    assert upscale(clips["silent"], "-o", out, "--quiet", *BICUBIC) == 0
    before = out.read_bytes()
    engine = RecordingEngine(BicubicEngine("cpu"), interrupt_after=3)
    options = UpscaleOptions([clips["mp4"]], output=out, overwrite=True, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_upscale(engine, options)
    assert out.read_bytes() == before
    assert tree(tmp_path) == ["film.mp4"]


def test_ctrl_c_through_the_cli_exits_130(
    clips, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import streamvsr.engines

    real = streamvsr.engines.create_engine

    def interrupting(settings):
        choice = real(settings)
        choice.engine = RecordingEngine(choice.engine, interrupt_after=3)
        return choice

    monkeypatch.setattr(streamvsr.engines, "create_engine", interrupting)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = upscale(clips["mp4"], "-o", out_dir / "film.mp4", "--save-frames", *BICUBIC)
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "streamvsr: interrupted"
    assert tree(out_dir) == []
