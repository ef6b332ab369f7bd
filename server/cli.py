"""The ``streamvsr`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, EngineSettings, Settings, load_settings

log = logging.getLogger("streamvsr")

ENGINE_FLAGS = {
    # flag: (settings key, help)
    "--engine": ("kind", "stream-diffvsr, bicubic or auto (Stream-DiffVSR if a GPU and weights)"),
    "--model": ("model", "Hugging Face model id or local checkpoint folder"),
    "--revision": ("revision", "hub revision (branch, tag or commit)"),
    "--device": ("device", "auto, cpu, cuda, cuda:N or mps"),
    "--dtype": ("dtype", "auto, fp32, fp16 or bf16"),
    "--steps": ("steps", "denoising steps (the model is distilled for 4)"),
    "--flow-model": ("flow_model", "raft_large or raft_small"),
    "--flow-resolution": ("flow_resolution", "hr (reference: RAFT on bicubic x4) or lr (faster)"),
    "--flow-weights": ("flow_weights", "RAFT state-dict file ('random' for speed tests only)"),
    "--attention": ("attention", "sdpa (default) or xformers"),
    "--unet": ("unet", "UNet override: component folder or weights file"),
    "--controlnet": ("controlnet", "ControlNet override: component folder or weights file"),
    "--vae": ("vae", "temporal VAE override: component folder or weights file"),
    "--vae-tile": ("vae_tile", "decode in latent tiles of this size (0 = off; saves memory)"),
    "--channels-last": ("channels_last", "NHWC memory format for the networks (true/false)"),
    "--sdpa-backend": ("sdpa_backend", "attention kernel: auto, flash, efficient, cudnn or math"),
    "--compile": (
        "compile",
        "torch.compile mode: off, default, reduce-overhead or max-autotune (+CUDA graphs)",
    ),
    "--cudnn-benchmark": (
        "cudnn_benchmark",
        "time cuDNN's kernels per shape once, keep the fastest: auto (on for CUDA), true, false",
    ),
    "--warmup-sizes": ("warmup_sizes", "LR sizes to compile at start, e.g. 320x180,480x270"),
    "--seed": ("seed", "noise seed of the first session"),
}
INT_KEYS = {"steps", "seed", "vae_tile"}
SERVER_FLAGS = {
    "--host": ("host", str, "address to listen on (0.0.0.0: all interfaces)"),
    "--port": ("port", int, "TCP port"),
    "--tls-cert": ("tls_cert", str, "PEM certificate: serve HTTPS"),
    "--tls-key": ("tls_key", str, "PEM private key of --tls-cert"),
    "--max-sessions": ("max_sessions", int, "concurrent sessions before 503"),
    "--max-batch": ("max_batch", int, "most frames per batched engine step"),
    "--whip-token": ("whip_token", str, "Bearer token WHIP publishers must send"),
    "--public-ip": ("public_ip", str, "public IP to advertise in ICE candidates (NAT, Docker)"),
    "--ice-host-addresses": ("ice_host_addresses", str, "comma-separated local ICE addresses"),
    "--h264-encoder": ("h264_encoder", str, "auto (NVENC if it opens, else x264), x264 or nvenc"),
}


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (defaults from configs/default.yaml)")
    group.add_argument("--config", metavar="YAML", help="settings file layered over the defaults")
    for flag, (key, text) in ENGINE_FLAGS.items():
        group.add_argument(
            flag,
            dest=f"engine_{key}",
            type=int if key in INT_KEYS else str,
            help=text,
            default=None,
        )


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server (defaults from configs/default.yaml)")
    for flag, (key, kind, text) in SERVER_FLAGS.items():
        group.add_argument(flag, dest=f"server_{key}", type=kind, help=text, default=None)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict] = {"engine": {}, "server": {}}
    for name, value in vars(args).items():
        section, _, key = name.partition("_")
        if section in overrides and value is not None:
            overrides[section][key] = value
    return load_settings(getattr(args, "config", None), overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import ssl

    import uvloop
    from aiohttp import web

    from .app import create_app
    from .engines import create_engine

    settings = _settings(args)
    server = settings.server
    choice = None
    if settings.engine.kind == "stream-diffvsr":
        # Asked for explicitly: refuse to start without it (auto loads in the background).
        log.info("loading Stream-DiffVSR (%s) before serving", settings.engine.model)
        choice = create_engine(settings.engine)
    context = None
    if server.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server.tls_cert, server.tls_key)
    scheme = "https" if context else "http"
    log.info("serving on %s://%s:%d/", scheme, server.host, server.port)
    web.run_app(
        create_app(settings, choice), host=server.host, port=server.port, ssl_context=context,
        print=None, loop=uvloop.new_event_loop(), shutdown_timeout=5,
    )  # fmt: skip
    return 0


def _size(text: str) -> tuple[int, int]:
    """'320x180' (width x height) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("session counts must be >= 1")
    return values


def cmd_download(args: argparse.Namespace) -> int:
    from engine import download

    engine = _settings(args).engine
    root = download(engine.model, engine.revision)
    print(f"model {engine.model} is in {root}; RAFT weights are in the torch cache")
    return 0


def cmd_random_checkpoint(args: argparse.Namespace) -> int:
    from engine import write_random_checkpoint

    path = write_random_checkpoint(args.path, size=args.size, seed=args.seed)
    print(f"wrote a {args.size} random-weight checkpoint to {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.engine import Case, format_table, run_all, to_json

    engine = _settings(args).engine
    height, width = args.size
    common = dict(
        model=engine.model,
        height=height,
        width=width,
        frames=args.frames,
        warmup=args.warmup,
        seed=engine.seed or 0,
    )
    options = engine.engine_options()
    cases = []
    if engine.kind != "bicubic":
        cases.append(Case("stream-diffvsr", options=options, sessions=args.sessions, **common))
        if args.baseline:
            cases.append(
                Case("reference-loop", options={**options, "flow_resolution": "hr"}, **common)
            )
    if engine.kind == "bicubic" or args.bicubic:
        device = "cpu" if engine.device == "auto" else engine.device
        cases.append(Case("bicubic", options={"device": device}, sessions=args.sessions, **common))
    results = run_all(cases, isolate=not args.in_process)
    print(format_table(results))
    sections = {}
    if args.serving:
        sections["serving"] = _bench_serving_with(engine, args)
    if args.encode:
        from bench import encoding

        sections["encode"] = encoding.run(frames=max(args.frames, 10))
        print(encoding.format_table(sections["encode"]))
    if args.json:
        Path(args.json).write_text(to_json(results, **sections) + "\n")
        print(f"results written to {args.json}")
    return 0


def _bench_serving_with(engine: EngineSettings, args: argparse.Namespace) -> list[dict]:
    """The serving benchmark (c) with the same engine settings, handed over as environment."""
    import yaml

    from bench import serving

    env = {
        f"STREAMVSR_ENGINE__{f.name.upper()}": yaml.safe_dump(getattr(engine, f.name)).strip()
        for f in dataclasses.fields(engine)
        if f.name != "warmup_sizes"
    }
    env["STREAMVSR_ENGINE__WARMUP_SIZES"] = f"[{args.size[1]}x{args.size[0]}]"
    height, width = args.size
    results = serving.run([], max(args.sessions), args.seconds, (width, height), 30, env=env)
    print(serving.format_table(results))
    return results


def cmd_upscale(args: argparse.Namespace) -> int:
    import json

    from .engines import create_engine
    from .upscale import UpscaleError, UpscaleOptions, prepare_upscale
    from .upscale.sources import FrameRange

    if args.end is not None and args.max_frames is not None:
        raise UpscaleError("give --end or --max-frames, not both")
    stop = args.end if args.max_frames is None else args.start + args.max_frames
    settings = _settings(args)
    options = UpscaleOptions(
        inputs=[Path(p) for p in args.inputs], output=Path(args.output) if args.output else None,
        overwrite=args.overwrite, frames=FrameRange(args.start, stop), sessions=args.sessions,
        input_size=args.input_size, output_size=args.output_size, filter=args.filter,
        save_frames=args.save_frames, codec=args.codec, crf=args.crf, preset=args.preset,
        seed=settings.engine.seed or 0, quiet=args.quiet or args.json,
    )  # fmt: skip
    job = prepare_upscale(options)  # bad paths are reported before the model loads
    choice = create_engine(settings.engine)
    if not args.quiet and not args.json:
        print(f"engine: {choice.engine.name} ({choice.reason})", file=sys.stderr)
    summary = {"engine": choice.engine.name, **job(choice.engine)}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(
            f"upscaled {summary['frames']} frames of {summary['sequences']} sequence(s) in "
            f"{summary['seconds']:.1f} s ({summary['frames_per_s']} frames/s) -> "
            + ", ".join(summary["outputs"])
        )
    return 0


def _size_wh(text: str) -> tuple[int, int]:
    height, width = _size(text)
    return width, height


def cmd_bench_serving(args: argparse.Namespace) -> int:
    import json

    from bench.serving import format_table, run

    height, width = args.size
    engine_args = [a for a in args.engine_args.split() if a]
    results = run(engine_args, args.max_streams, args.seconds, (width, height), args.fps)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def cmd_bench_encode(args: argparse.Namespace) -> int:
    import json

    from bench.encoding import format_table, run

    results = run(frames=args.frames, preset=args.preset)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamvsr",
        description="Real-time 4x video super-resolution with Stream-DiffVSR.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the real-time server (WebRTC, WHIP, WHEP, metrics)",
        description="Serve the browser page, WebRTC offer/answer, WHIP ingest (OBS), WHEP "
        "playback, /metrics, /healthz and /readyz. The engine loads in the background; /readyz "
        "says when it is ready.",
    )
    _add_engine_flags(p)
    _add_server_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "download",
        help="prefetch the model and RAFT weights into the local caches",
        description="Download everything the engine needs (model files from the "
        "Hugging Face hub into HF_HOME, RAFT weights into TORCH_HOME), so that "
        "later runs work offline (HF_HUB_OFFLINE=1).",
    )
    _add_engine_flags(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "bench",
        help="measure the engine: ms per frame by stage, batching, baseline",
        description="Run the engine on synthetic moving video and report ms per "
        "frame by stage, frames/s and peak memory, as a table and optionally JSON.",
    )
    _add_engine_flags(p)
    p.add_argument(
        "--size", type=_size, default=(64, 64), metavar="WxH", help="LR input size (default 64x64)"
    )
    p.add_argument("--frames", type=int, default=50, help="frames per session (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="frames not timed (default 3)")
    p.add_argument(
        "--sessions",
        type=_int_list,
        default=[1],
        metavar="N[,N...]",
        help="session counts to batch together, e.g. 1,2,4,8 (default 1)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run the reference-style whole-sequence loop on the same weights",
    )
    p.add_argument("--bicubic", action="store_true", help="also run the bicubic engine")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run cases in this process (faster start, memory numbers shared)",
    )
    p.add_argument(
        "--serving",
        action="store_true",
        help="also stream to a real server with this engine over loopback (receive->send latency "
        "p50/p95/p99, serving time per frame), 1 to the most --sessions clients",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="--serving: seconds per client count")
    p.add_argument(
        "--encode",
        action="store_true",
        help="also time the server's encoders at 720p, 1080p and 1440p output",
    )
    p.add_argument("--json", metavar="FILE", help="write results as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "upscale",
        help="upscale frame folders or video files offline (PNG frames, MP4 with audio)",
        description="Upscale 4x: a folder of sequence folders (IN/seq1/frame_0001.png ...), one "
        "sequence folder, image files, or a video file (-> MP4 with the original audio). "
        "Streams one frame at a time with constant memory; the temporal chain runs through "
        "each whole sequence. Output is written under a temporary name and renamed at the end.",
    )
    p.add_argument("inputs", nargs="+", help="folder(s), image files or one video file")
    p.add_argument("-o", "--output", help="output folder or .mp4 (default: <input>_x4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--start", type=int, default=0, help="first frame (0-based)")
    p.add_argument("--end", type=int, help="stop before this frame")
    p.add_argument("--max-frames", type=int, help="at most this many frames")
    p.add_argument(
        "--sessions",
        type=int,
        default=1,
        help="sequences upscaled together in one batched engine call (default 1)",
    )
    p.add_argument(
        "--input-size",
        type=_size_wh,
        metavar="WxH",
        help="resize input frames before upscaling (e.g. to cut cost)",
    )
    p.add_argument(
        "--output-size",
        type=_size_wh,
        metavar="WxH",
        help="resize the upscaled frames (e.g. to a delivery size)",
    )
    p.add_argument(
        "--filter",
        default="lanczos",
        choices=["lanczos", "bicubic", "bilinear", "area", "nearest"],
        help="filter for --input-size/--output-size (default lanczos)",
    )
    p.add_argument("--save-frames", action="store_true", help="video: also write PNG frames")
    p.add_argument("--codec", default="libx264", help="video encoder (default libx264)")
    p.add_argument("--crf", type=int, default=18, help="x264/x265 quality, lower = better")
    p.add_argument("--preset", default="medium", help="x264/x265 preset (default medium)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser(
        "bench-serving",
        help="measure the server end to end with real WebRTC clients over loopback",
        description="Start `streamvsr serve`, connect 1, 2, ... synthetic webcam streams and "
        "report receive->send latency, CPU per stream and drops, until frames drop.",
    )
    p.add_argument(
        "--engine-args",
        default="--engine bicubic",
        help="flags for the server's engine (default: --engine bicubic)",
    )
    p.add_argument("--size", type=_size, default=(180, 320), metavar="WxH")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--seconds", type=float, default=5.0, help="measurement per stream count")
    p.add_argument("--max-streams", type=int, default=8)
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_bench_serving)

    p = sub.add_parser(
        "bench-encode",
        help="measure the server's video encoders at 720p, 1080p and 1440p output",
        description="ms per frame of the H.264 (x264, the server's settings) and VP8 encoders "
        "on moving textured frames at 1280x720, 1920x1080 and 2560x1440.",
    )
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_bench_encode)

    p = sub.add_parser(
        "random-checkpoint",
        help="write a random-weight checkpoint in the official layout",
        description="Write a checkpoint with random weights in the official "
        "on-disk layout: 'tiny' for trying things on a CPU, 'full' (official "
        "shapes, ~3 GB) for speed benchmarks. Its output is noise, not video.",
    )
    p.add_argument("path", help="folder to create")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_random_checkpoint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from engine import EngineError

    from .upscale import UpscaleError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aioice", "aiortc", "aiohttp.access"):  # per-packet/per-request chatter
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, EngineError, UpscaleError) as exc:
        print(f"streamvsr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamvsr: interrupted", file=sys.stderr)
        return 130
