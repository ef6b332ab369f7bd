"""The ``streamvsr`` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from . import startup
from .config import ConfigError
from .flags import add_engine_flags, settings_from_args

log = logging.getLogger("streamvsr")

# Modules that add their commands to the parser (``register(subparsers)``), in --help order.
COMMANDS = (
    "streamvsr.server.command",
    "streamvsr.server.token_command",
    "streamvsr.server.cluster.command",
    "streamvsr.upscale.command",
    "streamvsr.bench.commands",
)


def cmd_download(args: argparse.Namespace) -> int:
    from streamvsr.engine import download

    engine = settings_from_args(args).engine
    root = download(engine.model, engine.revision)
    print(f"model {engine.model} is in {root}; RAFT weights are in the torch cache")
    return 0


def cmd_random_checkpoint(args: argparse.Namespace) -> int:
    from streamvsr.engine import write_random_checkpoint

    path = write_random_checkpoint(args.path, size=args.size, seed=args.seed)
    print(f"wrote a {args.size} random-weight checkpoint to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamvsr",
        description="Real-time 4x video super-resolution with Stream-DiffVSR.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for module in COMMANDS:
        importlib.import_module(module).register(sub)

    p = sub.add_parser(
        "download",
        help="prefetch the model and RAFT weights into the local caches",
        description="Download everything the engine needs (model files from the "
        "Hugging Face hub into HF_HOME, RAFT weights into TORCH_HOME), so that "
        "later runs work offline (HF_HUB_OFFLINE=1).",
    )
    add_engine_flags(p)
    p.set_defaults(func=cmd_download)

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
    from streamvsr.engine import EngineError

    from .upscale.errors import UpscaleError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    startup.install(chatter_level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, EngineError, UpscaleError) as exc:
        print(f"streamvsr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamvsr: interrupted", file=sys.stderr)
        return 130
