"""``streamvsr upscale``: frame folders and video files, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamvsr.flags import add_engine_flags, parse_size_wh, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
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
        type=parse_size_wh,
        metavar="WxH",
        help="resize input frames before upscaling (e.g. to cut cost)",
    )
    p.add_argument(
        "--output-size",
        type=parse_size_wh,
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
    add_engine_flags(p)
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> int:
    import json

    from streamvsr.engines import create_engine

    from .errors import UpscaleError
    from .job import UpscaleOptions, prepare_upscale
    from .sources import FrameRange

    if args.end is not None and args.max_frames is not None:
        raise UpscaleError("give --end or --max-frames, not both")
    stop = args.end if args.max_frames is None else args.start + args.max_frames
    settings = settings_from_args(args)
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
