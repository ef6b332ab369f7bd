"""The benchmark commands: ``streamvsr bench``, ``bench-serving``, ``bench-encode`` and
``bench-churn``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from streamvsr.config import EngineSettings, environment
from streamvsr.engine.options import EngineOptions
from streamvsr.flags import add_engine_flags, parse_int_list, parse_size, settings_from_args

KINDS = ("offer", "whip", "whep")  # bench-churn's sessions (bench.churn.KINDS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the engine: ms per frame by stage, batching, baseline",
        description="Run the engine on synthetic moving video and report ms per "
        "frame by stage, frames/s and peak memory, as a table and optionally JSON.",
    )
    add_engine_flags(p)
    p.add_argument(
        "--size",
        type=parse_size,
        default=(64, 64),
        metavar="WxH",
        help="LR input size (default 64x64)",
    )
    p.add_argument("--frames", type=int, default=50, help="frames per session (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="frames not timed (default 3)")
    p.add_argument(
        "--sessions",
        type=parse_int_list,
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
        "bench-serving",
        help="measure the server end to end with real WebRTC clients over loopback",
        description="Start `streamvsr serve`, connect 1, 2, ... synthetic webcam streams and "
        "report receive->send latency, CPU per stream and drops, until frames drop. With "
        "--viewers: publish one WHIP stream and watch it with that many WHEP viewers in turn; "
        "report the server's CPU per viewer and its encodes per second.",
    )
    p.add_argument(
        "--engine-args",
        default="--engine bicubic",
        help="flags for the server's engine (default: --engine bicubic)",
    )
    p.add_argument(
        "--size", type=parse_size, metavar="WxH", help="client video (default 320x180; 160x90 "
        "with --viewers)",
    )  # fmt: skip
    p.add_argument("--fps", type=int, help="client frames/s (default 30; 15 with --viewers)")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement per stream count")
    p.add_argument("--max-streams", type=int, default=8)
    p.add_argument(
        "--viewers",
        type=parse_int_list,
        metavar="N[,N...]",
        help="measure one WHIP stream with this many WHEP viewers in turn (e.g. 1,5,20)",
    )
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
        "bench-churn",
        help="open and close many short sessions; report the server's memory and threads",
        description="Start `streamvsr serve` and churn short sessions through it with real "
        "WebRTC clients over loopback (page /offer, WHIP publishers, WHEP viewers), each streaming "
        "a few frames; report the server's RSS, threads and malloc arenas before, during and "
        "after (and after an idle settle), threads per live session and RSS growth per 1000.",
    )
    p.add_argument("--sessions", type=int, default=2000, help="sessions to churn (default 2000)")
    p.add_argument("--concurrency", type=int, default=4, help="sessions at once (default 4)")
    p.add_argument(
        "--kinds",
        type=parse_kinds,
        default=list(KINDS),
        metavar="KIND[,KIND...]",
        help="offer (the page), whip, whep (a viewer of its own WHIP publisher), taken in turn "
        "(default offer,whip,whep)",
    )
    p.add_argument("--frames", type=int, default=5, help="video frames per session (default 5)")
    p.add_argument("--size", type=parse_size, default=(48, 64), metavar="WxH")
    p.add_argument("--every", type=int, default=0, help="sessions between samples (0: ~10 rows)")
    p.add_argument("--settle", type=float, default=10.0, help="idle seconds before the last row")
    p.add_argument(
        "--engine-args",
        default="--engine bicubic",
        help="flags for the server (default: --engine bicubic)",
    )
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_bench_churn)


def cmd_bench(args: argparse.Namespace) -> int:
    from .engine_speed import Case, format_table, run_all, to_json

    engine = settings_from_args(args).engine
    height, width = args.size
    common = dict(
        model=engine.model,
        height=height,
        width=width,
        frames=args.frames,
        warmup=args.warmup,
        seed=engine.seed or 0,
    )
    # A case takes load_engine's keyword overrides (and carries them to a fresh process).
    options = {f.name: getattr(engine, f.name) for f in dataclasses.fields(EngineOptions)}
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
        from . import encoder_speed as encoding

        sections["encode"] = encoding.run(frames=max(args.frames, 10))
        print(encoding.format_table(sections["encode"]))
    if args.json:
        Path(args.json).write_text(to_json(results, **sections) + "\n")
        print(f"results written to {args.json}")
    return 0


def _bench_serving_with(engine: EngineSettings, args: argparse.Namespace) -> list[dict]:
    """The serving benchmark (c) with the same engine settings, handed over as environment."""
    from . import serving

    height, width = args.size
    values = {f.name: getattr(engine, f.name) for f in dataclasses.fields(engine)}
    env = environment("engine", {**values, "warmup_sizes": [f"{width}x{height}"]})
    results = serving.run([], max(args.sessions), args.seconds, (width, height), 30, env=env)
    print(serving.format_table(results))
    return results


def cmd_bench_serving(args: argparse.Namespace) -> int:
    import json

    engine_args = [a for a in args.engine_args.split() if a]
    if args.viewers:
        from .viewers import ViewerBench, format_table, run

        height, width = args.size or (90, 160)
        bench = ViewerBench(
            counts=tuple(args.viewers), size=(width, height), fps=args.fps or 15,
            seconds=args.seconds, engine_args=tuple(engine_args),
        )  # fmt: skip
        results = run(bench)
    else:
        from .serving import format_table, run

        height, width = args.size or (180, 320)
        results = run(engine_args, args.max_streams, args.seconds, (width, height), args.fps or 30)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def cmd_bench_encode(args: argparse.Namespace) -> int:
    import json

    from .encoder_speed import format_table, run

    results = run(frames=args.frames, preset=args.preset)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"kinds are {', '.join(KINDS)}, got {text!r}")
    return kinds


def cmd_bench_churn(args: argparse.Namespace) -> int:
    import json

    from .churn import Churn, format_table, run

    height, width = args.size
    config = Churn(
        sessions=args.sessions, concurrency=args.concurrency, kinds=tuple(args.kinds),
        frames=args.frames, size=(width, height), every=args.every, settle_s=args.settle,
        engine_args=tuple(a for a in args.engine_args.split() if a),
    )  # fmt: skip
    result = run(config)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0
