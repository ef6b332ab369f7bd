"""``streamvsr upscale`` on bad input: one line "streamvsr: error: ...", exit code 2, and no output
file left behind (final, temporary or partial); --overwrite replaces an existing output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from support.media import BICUBIC, make_clip, read_png, read_video, tree, write_png

from streamvsr.cli import main


def upscale(*args: str) -> int:
    return main(["upscale", *map(str, args)])


def fails(capsys: pytest.CaptureFixture, *args) -> str:
    """Run the CLI, expect exit code 2 and one error line on stderr (nothing on stdout); return
    the line."""
    code = upscale(*args, *BICUBIC)
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("streamvsr: error: ")
    assert captured.out == ""
    return lines[0]


@pytest.fixture
def frames(make_frames) -> list[np.ndarray]:
    return make_frames(4, 16, 16, seed=9)


@pytest.fixture
def clip(tmp_path: Path, frames) -> Path:
    (tmp_path / "in").mkdir()
    return make_clip(tmp_path / "in" / "clip.mp4", frames)


@pytest.fixture
def sequence(tmp_path: Path, frames) -> Path:
    folder = tmp_path / "seq"
    for n, pixels in enumerate(frames, start=1):
        write_png(folder / f"frame_{n:04d}.png", pixels)
    return folder


# --- inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.mp4", "missing_folder", "missing.png"])
def test_missing_input(tmp_path: Path, capsys, name: str) -> None:
    before = tree(tmp_path)
    line = fails(capsys, tmp_path / name, "-o", tmp_path / "out.mp4")
    assert str(tmp_path / name) in line and "does not exist" in line
    assert tree(tmp_path) == before


def test_empty_folder(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)  # an empty sequence folder
    (empty / "readme.txt").write_text("no frames here")
    before = tree(tmp_path)
    line = fails(capsys, empty, "-o", tmp_path / "out")
    assert str(empty) in line and "no images" in line
    assert tree(tmp_path) == before


def test_corrupt_image_file(sequence: Path, tmp_path: Path, capsys) -> None:
    bad = sequence / "frame_0003.png"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    before = tree(tmp_path)
    line = fails(capsys, sequence, "-o", tmp_path / "out")
    assert "cannot read image" in line and str(bad) in line
    assert tree(tmp_path) == before


def test_truncated_image_found_while_upscaling(sequence: Path, tmp_path: Path, capsys) -> None:
    """The header reads fine, so the job starts; the error comes mid-sequence and the frames
    already written must go."""
    bad = sequence / "frame_0003.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    before = tree(tmp_path)
    line = fails(capsys, sequence, "-o", tmp_path / "out", "--quiet")
    assert "cannot read image" in line and str(bad) in line
    assert tree(tmp_path) == before


def test_corrupt_video_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(1).bytes(5000))
    before = tree(tmp_path)
    line = fails(capsys, bad, "-o", tmp_path / "out.mp4")
    assert "cannot read video" in line and str(bad) in line
    assert tree(tmp_path) == before


def test_truncated_video_file(clip: Path, tmp_path: Path, capsys) -> None:
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 2])  # PyAV writes the index (moov) at the end
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", tmp_path / "out.mp4")
    assert "cannot read video" in line and str(clip) in line
    assert tree(tmp_path) == before


def test_mixed_frame_sizes_in_one_sequence(sequence: Path, tmp_path: Path, frames, capsys) -> None:
    odd = write_png(sequence / "frame_0005.png", np.zeros((20, 16, 3), np.uint8))
    before = tree(tmp_path)
    line = fails(capsys, sequence, "-o", tmp_path / "out")
    assert str(odd) in line and "16x20" in line and "16x16" in line
    assert tree(tmp_path) == before


def test_mixed_frame_sizes_in_a_list_of_images(tmp_path: Path, frames, capsys) -> None:
    a = write_png(tmp_path / "a.png", frames[0])
    b = write_png(tmp_path / "b.png", np.zeros((8, 8, 3), np.uint8))
    before = tree(tmp_path)
    line = fails(capsys, a, b, "-o", tmp_path / "out")
    assert str(b) in line and "share a size" in line
    assert tree(tmp_path) == before


def test_video_among_several_inputs(clip: Path, sequence: Path, tmp_path: Path, capsys) -> None:
    image = sequence / "frame_0001.png"
    before = tree(tmp_path)
    line = fails(capsys, image, clip, "-o", tmp_path / "out")
    assert str(clip) in line and "not an image" in line
    assert tree(tmp_path) == before


def test_range_with_no_frames(clip: Path, tmp_path: Path, capsys) -> None:
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", tmp_path / "out.mp4", "--start", "100", "--quiet")
    assert "no frames" in line and str(clip) in line
    assert tree(tmp_path) == before


def test_end_and_max_frames_together(clip: Path, tmp_path: Path, capsys) -> None:
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", tmp_path / "out.mp4", "--end", "3", "--max-frames", "2")
    assert "--end" in line and "--max-frames" in line
    assert tree(tmp_path) == before


def test_sessions_below_one(sequence: Path, tmp_path: Path, capsys) -> None:
    before = tree(tmp_path)
    line = fails(capsys, sequence, "-o", tmp_path / "out", "--sessions", "0")
    assert "--sessions" in line
    assert tree(tmp_path) == before


def test_video_output_must_be_mp4(clip: Path, tmp_path: Path, capsys) -> None:
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", tmp_path / "out.mkv")
    assert str(tmp_path / "out.mkv") in line and ".mp4" in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("flags", [["--output-size", "101x61"], ["--preset", "no-such-preset"]])
def test_settings_the_encoder_rejects(clip: Path, tmp_path: Path, capsys, flags) -> None:
    before = tree(tmp_path)
    fails(capsys, clip, "-o", tmp_path / "out.mp4", "--quiet", *flags)
    assert tree(tmp_path) == before


# --- outputs -------------------------------------------------------------------------------------


def test_output_under_a_missing_folder(clip: Path, sequence: Path, tmp_path: Path, capsys) -> None:
    before = tree(tmp_path)
    target = tmp_path / "no" / "such" / "folder" / "out.mp4"
    line = fails(capsys, clip, "-o", target)
    assert str(target.parent) in line and "does not exist" in line
    target = tmp_path / "nowhere" / "frames"
    line = fails(capsys, sequence, "-o", target)
    assert str(target.parent) in line and "does not exist" in line
    assert tree(tmp_path) == before


def test_output_under_a_file(clip: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", blocker / "out.mp4")
    assert str(blocker) in line
    assert tree(tmp_path) == before
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders"
)
def test_output_in_a_read_only_folder(clip: Path, tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = fails(capsys, clip, "-o", locked / "out.mp4")
        assert str(locked) in line and "not writable" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_existing_video_output_needs_overwrite(clip: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", out)
    assert str(out) in line and "already exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"precious"
    assert tree(tmp_path) == before

    assert upscale(clip, "-o", out, "--overwrite", "--quiet", *BICUBIC) == 0
    video = read_video(out)
    assert (video.width, video.height, len(video.frames)) == (64, 64, 4)
    assert tree(tmp_path) == before  # replaced in place, nothing else left


def test_existing_frames_folder_needs_overwrite(clip: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.mp4"
    frames_dir = tmp_path / "out_frames"
    frames_dir.mkdir()
    (frames_dir / "mine.txt").write_text("keep")
    before = tree(tmp_path)
    line = fails(capsys, clip, "-o", out, "--save-frames")
    assert str(frames_dir) in line and "already exists" in line
    assert tree(tmp_path) == before

    assert upscale(clip, "-o", out, "--save-frames", "--overwrite", "-q", *BICUBIC) == 0
    assert sorted(p.name for p in frames_dir.iterdir()) == [f"frame_{n:06d}.png" for n in range(4)]
    assert out.is_file()


def test_existing_folder_output_needs_overwrite(sequence: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    before = tree(tmp_path)
    line = fails(capsys, sequence, "-o", out)
    assert str(out) in line and "already exists" in line and "--overwrite" in line
    assert (out / "stale.png").read_bytes() == b"old"
    assert tree(tmp_path) == before

    assert upscale(sequence, "-o", out, "--overwrite", "--quiet", *BICUBIC) == 0
    assert tree(out) == [f"frame_{n:04d}.png" for n in range(1, 5)]  # the old content is gone
    assert read_png(out / "frame_0001.png").shape == (64, 64, 3)
