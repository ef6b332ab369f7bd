"""``streamvsr upscale`` on image sequences: a folder of sequence folders, one sequence folder or a
list of images -> the same tree and names as PNG, 4x; frame ranges and size options; sessions
batched together give the frames one at a time gives, each on one unbroken temporal chain; Ctrl-C
leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.media import (
    BICUBIC,
    RecordingEngine,
    bicubic_x4,
    read_png,
    tiny_flags,
    tree,
    write_png,
)

from streamvsr.cli import main
from streamvsr.engine import BicubicEngine
from streamvsr.upscale import UpscaleOptions, run_upscale


def upscale(*args: str) -> int:
    return main(["upscale", *map(str, args)])


def write_sequence(folder: Path, frames: list[np.ndarray], suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, pixels in enumerate(frames, start=1):
        path = folder / f"frame_{number:04d}{suffix}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def sequences(tmp_path: Path, make_frames) -> Path:
    """IN/seq1: 4 PNGs 24x16, IN/seq2: 3 JPEGs 32x24 (and a text file that is not a frame)."""
    root = tmp_path / "IN"
    write_sequence(root / "seq1", make_frames(4, 16, 24, seed=1))
    write_sequence(root / "seq2", make_frames(3, 24, 32, seed=2), suffix=".jpg")
    (root / "seq1" / "notes.txt").write_text("not a frame")
    return root


SEQUENCE_TREE = [
    "seq1",
    *(f"seq1/frame_{n:04d}.png" for n in range(1, 5)),
    "seq2",
    *(f"seq2/frame_{n:04d}.png" for n in range(1, 4)),
]


def assert_bicubic_of(output: Path, source: Path) -> None:
    """``output`` is the bicubic engine's 4x of ``source``, pixel for pixel."""
    with Image.open(source) as image:
        expected = bicubic_x4(np.asarray(image.convert("RGB")))
    np.testing.assert_array_equal(read_png(output), expected)


def test_folder_of_sequences_gives_the_same_tree_and_names(sequences: Path) -> None:
    assert upscale(sequences, "--quiet", *BICUBIC) == 0  # default output: IN_x4 beside IN
    out = sequences.with_name("IN_x4")
    assert tree(out) == SEQUENCE_TREE
    for name in SEQUENCE_TREE:
        if name.endswith(".png"):
            source = next((sequences / name).parent.glob(Path(name).stem + ".*"))
            assert_bicubic_of(out / name, source)  # which is 4x the size
    assert sorted(p.name for p in out.parent.iterdir()) == ["IN", "IN_x4"]  # nothing else


def test_single_sequence_folder(sequences: Path, tmp_path: Path) -> None:
    out = tmp_path / "result"
    assert upscale(sequences / "seq2", "-o", out, "--quiet", *BICUBIC) == 0
    assert tree(out) == [f"frame_{n:04d}.png" for n in range(1, 4)]
    for n in range(1, 4):
        assert_bicubic_of(out / f"frame_{n:04d}.png", sequences / "seq2" / f"frame_{n:04d}.jpg")


def test_list_of_image_files(tmp_path: Path, make_frames) -> None:
    frames = make_frames(3, 16, 16, seed=4)
    files = [
        write_png(tmp_path / "shots" / "b_last.png", frames[2]),
        write_png(tmp_path / "shots" / "a_first.png", frames[0]),
        write_png(tmp_path / "shots" / "a_second.png", frames[1]),
    ]
    out = tmp_path / "result"
    assert upscale(*files, "-o", out, "--quiet", *BICUBIC) == 0
    assert tree(out) == ["a_first.png", "a_second.png", "b_last.png"]
    for path in files:
        assert_bicubic_of(out / path.name, path)


def test_frame_range_applies_to_each_sequence(sequences: Path, tmp_path: Path) -> None:
    out = tmp_path / "result"
    assert upscale(sequences, "-o", out, "--start", "1", "--end", "3", "--quiet", *BICUBIC) == 0
    assert tree(out) == [
        "seq1", "seq1/frame_0002.png", "seq1/frame_0003.png",
        "seq2", "seq2/frame_0002.png", "seq2/frame_0003.png",
    ]  # fmt: skip
    assert_bicubic_of(out / "seq1" / "frame_0002.png", sequences / "seq1" / "frame_0002.png")

    out = tmp_path / "result2"
    assert upscale(sequences, "-o", out, "--start", "2", "--max-frames", "5", "-q", *BICUBIC) == 0
    assert tree(out) == [
        "seq1",
        "seq1/frame_0003.png",
        "seq1/frame_0004.png",
        "seq2",
        "seq2/frame_0003.png",
    ]


def test_input_size_resizes_before_the_engine(sequences: Path, tmp_path: Path) -> None:
    out = tmp_path / "result"
    code = upscale(
        sequences / "seq1", "-o", out, "--input-size", "12x8", "--filter", "area", "-q", *BICUBIC
    )
    assert code == 0
    for n in range(1, 5):
        with Image.open(sequences / "seq1" / f"frame_{n:04d}.png") as image:
            small = np.asarray(image.convert("RGB").resize((12, 8), Image.BOX))
        result = read_png(out / f"frame_{n:04d}.png")
        assert result.shape == (32, 48, 3)
        np.testing.assert_array_equal(result, bicubic_x4(small))


def test_output_size_resizes_after_the_engine(sequences: Path, tmp_path: Path) -> None:
    out = tmp_path / "result"
    code = upscale(
        sequences / "seq1", "-o", out, "--output-size", "50x30", "--filter", "nearest", "-q",
        *BICUBIC,
    )  # fmt: skip
    assert code == 0
    for n in range(1, 5):
        with Image.open(sequences / "seq1" / f"frame_{n:04d}.png") as image:
            upscaled = bicubic_x4(np.asarray(image.convert("RGB")))
        expected = np.asarray(Image.fromarray(upscaled).resize((50, 30), Image.NEAREST))
        result = read_png(out / f"frame_{n:04d}.png")
        assert result.shape == (30, 50, 3)
        np.testing.assert_array_equal(result, expected)

    # Another filter gives other pixels of the same size.
    other = tmp_path / "lanczos"
    assert upscale(sequences / "seq1", "-o", other, "--output-size", "50x30", "-q", *BICUBIC) == 0
    lanczos = read_png(other / "frame_0001.png")
    assert lanczos.shape == (30, 50, 3)
    assert not np.array_equal(lanczos, read_png(out / "frame_0001.png"))


# --- sessions and the temporal chain (tiny Stream-DiffVSR) ------------------------------------

SESSION_SEQUENCES = {"a": (4, 16, 24), "b": (2, 24, 32), "c": (3, 16, 24)}  # frames, H, W


@pytest.fixture(scope="module")
def session_runs(
    tmp_path_factory: pytest.TempPathFactory, make_frames, tiny_checkpoint, raft_weights
) -> dict:
    """Three sequences of different lengths and sizes, upscaled by the tiny engine through the CLI
    with --sessions 1 and --sessions 2; every engine step recorded."""
    import streamvsr.engines

    root = tmp_path_factory.mktemp("sessions")
    for seed, (name, (count, height, width)) in enumerate(SESSION_SEQUENCES.items()):
        write_sequence(root / "IN" / name, make_frames(count, height, width, seed=seed))
    real = streamvsr.engines.create_engine
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        for sessions in (1, 2):
            engines = []

            def recording(settings, engines=engines):
                choice = real(settings)
                choice.engine = RecordingEngine(choice.engine)
                engines.append(choice.engine)
                return choice

            patch.setattr(streamvsr.engines, "create_engine", recording)
            out = root / f"out{sessions}"
            code = upscale(
                root / "IN", "-o", out, "--sessions", sessions, "-q",
                *tiny_flags(tiny_checkpoint, raft_weights),
            )  # fmt: skip
            assert code == 0
            [engine] = engines
            runs[sessions] = (out, engine)
    return runs


def test_sessions_2_gives_the_frames_of_sessions_1(session_runs) -> None:
    (one, _), (two, batched) = session_runs[1], session_runs[2]
    expected = [
        name
        for seq, (count, _, _) in SESSION_SEQUENCES.items()
        for name in [seq, *(f"{seq}/frame_{n:04d}.png" for n in range(1, count + 1))]
    ]
    assert tree(one) == tree(two) == expected
    for name in expected:
        if name.endswith(".png"):
            _, height, width = SESSION_SEQUENCES[name.split("/")[0]]
            a, b = read_png(one / name).astype(int), read_png(two / name).astype(int)
            assert a.shape == (4 * height, 4 * width, 3)
            assert np.abs(a - b).max() <= 1, name
    assert max(len(step.sessions) for step in batched.steps) == 2  # it did batch


def test_each_sequence_runs_one_unbroken_chain(session_runs) -> None:
    lengths = [count for count, _, _ in SESSION_SEQUENCES.values()]
    for sessions in (1, 2):
        _, engine = session_runs[sessions]
        # One session per sequence, in order; each sees 0..N-1 once, in order.
        assert engine.per_session() == {i: list(range(n)) for i, n in enumerate(lengths)}
        for step in engine.steps:
            assert len(step.sessions) <= sessions
            assert len(set(step.sessions)) == len(step.sessions)  # no session twice in a step
            # Only frame 0 of a sequence starts a chain: no restart in the middle.
            assert step.fresh == [index == 0 for index in step.frame_indices]


def test_two_sequences_batched_through_run_upscale(load_tiny, make_frames, tmp_path: Path) -> None:
    write_sequence(tmp_path / "IN" / "one", make_frames(2, 16, 16, seed=7))
    write_sequence(tmp_path / "IN" / "two", make_frames(4, 16, 16, seed=8))
    engine = RecordingEngine(load_tiny(flow_resolution="lr"))
    summary = run_upscale(
        engine,
        UpscaleOptions([tmp_path / "IN"], output=tmp_path / "out", sessions=2, quiet=True),
    )
    assert summary["frames"] == 6 and summary["sequences"] == 2
    assert engine.per_session() == {0: [0, 1], 1: [0, 1, 2, 3]}
    assert [step.sessions for step in engine.steps] == [[0, 1], [0, 1], [1], [1]]
    assert [step.fresh for step in engine.steps] == [[True, True], [False, False], [False],
                                                     [False]]  # fmt: skip
    assert len(tree(tmp_path / "out")) == 2 + 6


# --- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_in_folder_mode_leaves_no_output(sequences: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    engine = RecordingEngine(BicubicEngine("cpu"), interrupt_after=3)
    options = UpscaleOptions([sequences], output=out_dir / "result", sessions=2, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_upscale(engine, options)
    assert engine.frames_done >= 3  # interrupted in the middle (7 frames in all)
    assert tree(out_dir) == []  # no result folder, no hidden partial folder


def test_ctrl_c_keeps_an_existing_folder_output_intact(sequences: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "result"
    (out / "seq1").mkdir(parents=True)
    (out / "seq1" / "old.png").write_bytes(b"old frame")
    engine = RecordingEngine(BicubicEngine("cpu"), interrupt_after=3)
    options = UpscaleOptions([sequences], output=out, overwrite=True, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run_upscale(engine, options)
    assert tree(out.parent) == ["result", "result/seq1", "result/seq1/old.png"]
    assert (out / "seq1" / "old.png").read_bytes() == b"old frame"
