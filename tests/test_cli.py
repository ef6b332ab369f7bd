"""The ``streamvsr`` command line: help, random checkpoints, bench output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.certificates import self_signed_certificate

from streamvsr.cli import main


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamvsr", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("download", "bench", "random-checkpoint"):
        assert command in result.stdout


def test_missing_model_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = run_cli("bench", "--engine", "stream-diffvsr", "--model", str(missing))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streamvsr: error:")
    assert str(missing) in lines[0] and "streamvsr download" in lines[0]


def test_bad_setting_is_one_line_and_exit_2() -> None:
    result = run_cli("bench", "--dtype", "fp8")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "streamvsr: error: engine.dtype must be one of auto, fp32, fp16, bf16, got 'fp8' "
        "(from command line)"
    )


def run_tiny_bench(checkpoint: Path, raft_weights: Path, out: Path, *args: str) -> int:
    """``streamvsr bench`` in this process on the tiny checkpoint (CPU, random RAFT-small, one
    warm-up frame), results written to ``out``."""
    return main(
        ["bench", "--model", str(checkpoint), "--device", "cpu", "--flow-model", "raft_small",
         "--flow-weights", str(raft_weights), "--warmup", "1", "--in-process", "--json", str(out),
         *args]
    )  # fmt: skip


def test_bench_reports_stages_and_agrees_with_reference_loop(
    tiny_checkpoint: Path, raft_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "bench.json"
    code = run_tiny_bench(
        tiny_checkpoint, raft_weights, out, "--dtype", "fp32", "--size", "32x32", "--frames", "4",
        "--sessions", "1,2", "--baseline", "--bicubic",
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "reference-loop vs engine, last frame: max |diff| = 0" in table
    report = json.loads(out.read_text())
    rows = {(r["engine"], r["sessions"]): r for r in report["results"]}
    assert set(rows) == {
        ("stream-diffvsr", 1), ("stream-diffvsr", 2), ("reference-loop", 1),
        ("bicubic", 1), ("bicubic", 2),
    }  # fmt: skip
    engine_row = rows[("stream-diffvsr", 1)]
    assert engine_row["hr_size"] == "128x128"
    for stage in ("flow", "guide", "denoise", "vae_decode"):
        assert engine_row["stage_ms_per_step"][stage] > 0
    # The stages come from their own synchronised run of min(frames, 5) steps.
    assert engine_row["stage_steps"] == dict.fromkeys(engine_row["stage_ms_per_step"], 4)
    assert "separate synchronised run" in report["notes"]["stage_ms_per_step"]
    assert "gpu_ms_per_step" not in engine_row  # CUDA events only on CUDA
    assert rows[("stream-diffvsr", 2)]["ms_per_frame"] == pytest.approx(
        rows[("stream-diffvsr", 2)]["ms_per_step"] / 2
    )
    # The reference loop's stages per frame they ran on: no flow or ControlNet for frame 0.
    reference = rows[("reference-loop", 1)]
    assert reference["stage_steps"] == {"flow": 3, "controlnet": 3, "unet": 4, "vae_decode": 4}
    # This is the plain fp32 path: no deviation from itself, on every row of the case.
    for sessions in (1, 2):
        deviation = rows[("stream-diffvsr", sessions)]["deviation"]
        assert deviation == {
            "max": 0, "mean": 0.0, "psnr_db": float("inf"), "frames": 4, "plain": True,
        }  # fmt: skip
    assert "deviation" not in reference and "deviation" not in rows[("bicubic", 1)]
    assert "dev max" in table and "PSNR" in table
    assert report["machine"]["cores"] >= 1


def test_bench_reports_how_far_bf16_is_from_plain_fp32(
    tiny_checkpoint: Path, raft_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """bf16 is compared with a plain fp32 engine on the same frames, noise and RAFT weights."""
    out = tmp_path / "bench.json"
    code = run_tiny_bench(
        tiny_checkpoint, raft_weights, out, "--dtype", "bf16", "--size", "24x16", "--frames", "2"
    )
    assert code == 0
    table = capsys.readouterr().out
    [row] = json.loads(out.read_text())["results"]
    deviation = row["deviation"]
    assert deviation["frames"] == 2 and "plain" not in deviation
    assert 0 < deviation["max"] <= 2  # bf16 weights: within two grey levels (test_acceleration)
    assert 0 < deviation["mean"] < 0.5
    assert 40 < deviation["psnr_db"] < float("inf")
    header, values = table.splitlines()[:2]
    assert "dev max" in header and "dev mean" in header and "PSNR" in header
    assert f" {deviation['mean']:.3f} " in values and f" {deviation['psnr_db']:.1f} " in values


def test_random_checkpoint_command_writes_the_official_layout(tmp_path: Path) -> None:
    assert main(["random-checkpoint", str(tmp_path / "ckpt")]) == 0
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert names == {
        "model_index.json", "unet", "controlnet", "vae", "scheduler", "text_encoder", "tokenizer",
    }  # fmt: skip
    index = json.loads((tmp_path / "ckpt" / "model_index.json").read_text())
    assert index["vae"] == [None, "TemporalAutoencoderTiny"]


def test_serve_speaks_https_with_a_certificate(tmp_path: Path) -> None:
    import socket
    import ssl
    import time
    import urllib.request

    cert, key = self_signed_certificate(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamvsr", "serve", "--engine", "bicubic", "--device", "cpu",
         "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"https://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, context=context, timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not answer over HTTPS"
                time.sleep(0.2)
        with pytest.raises(OSError):  # plain HTTP is not served on that port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        server.terminate()
        server.wait(10)


def test_serve_refuses_to_start_without_the_asked_for_model(tmp_path: Path) -> None:
    result = run_cli("serve", "--engine", "stream-diffvsr", "--model", str(tmp_path / "none"))
    assert result.returncode == 2
    assert "not a checkpoint folder" in result.stderr


def test_bench_encode_measures_the_servers_encoders() -> None:
    from streamvsr.bench.encoder_speed import measure
    from streamvsr.server.encoders import EncoderSettings

    for codec in ("h264", "vp8"):
        result = measure(codec, "720p", 3, EncoderSettings(x264_preset="ultrafast"))
        assert result["size"] == "720p" and result["codec"] == codec
        assert result["ms_per_frame"] > 0 and result["p95_ms"] >= 0
        assert result["kbit_per_frame"] > 1  # real packets came out


def test_bench_runs_engine_serving_and_encoders_in_one_report(tmp_path: Path) -> None:
    """(a)-(d) in one run: the engine by stage and batched, the serving path through a real server
    and aiortc clients on loopback (latency p50/p95/p99, what serving adds), the encoders at
    720p/1080p/1440p, with ratios; bicubic keeps it fast."""
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--engine", "bicubic", "--device", "cpu", "--size", "320x180", "--frames", "3",
        "--warmup", "1", "--sessions", "1", "--serving", "--seconds", "2", "--encode",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [r["engine"] for r in report["results"]] == ["bicubic"]
    [serving] = report["serving"]
    assert serving["streams"] == 1 and serving["frames_out"] > 0
    assert 0 < serving["latency_p50_ms"] <= serving["latency_p95_ms"] <= serving["latency_p99_ms"]
    assert serving["encode_mean_ms"] > 0 and serving["serving_overhead_mean_ms"] > 0
    sizes = {(r["codec"], r["size"]) for r in report["encode"]}
    assert {("h264", s) for s in ("720p", "1080p", "1440p")} <= sizes
    assert all(r["ms_per_frame"] > 0 for r in report["encode"])
    assert {r["input"] for r in report["encode"]} == {"rgb24", "yuv420p"}
    assert "p99 ms" in result.stdout and "serving ms" in result.stdout
