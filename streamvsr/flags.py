"""Command-line flags for the settings, and argument types the commands share."""

from __future__ import annotations

import argparse
from dataclasses import Field
from typing import get_args, get_type_hints

from .config import SECTIONS, Settings, declared, load_settings


def flag_name(setting: Field) -> str:
    """``--flow-model`` for ``flow_model``, unless the declaration names another flag."""
    return setting.metadata["flag"] or "--" + setting.name.replace("_", "-")


def _flag_type(annotation) -> type:
    """Numbers are parsed by argparse; every other setting's check parses the flag's text."""
    kinds = set(get_args(annotation)) - {type(None)} or {annotation}
    return kinds.pop() if kinds in ({int}, {float}) else str


def _add_flags(group: argparse._ArgumentGroup, section: str) -> None:
    types = get_type_hints(SECTIONS[section])
    for setting in declared(section):
        group.add_argument(
            flag_name(setting),
            dest=f"{section}_{setting.name}",
            metavar=setting.name.upper(),
            type=_flag_type(types[setting.name]),
            help=setting.metadata["help"].replace("%", "%%"),
            default=None,
        )


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (defaults from configs/default.yaml)")
    group.add_argument("--config", metavar="YAML", help="settings file layered over the defaults")
    _add_flags(group, "engine")


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser.add_argument_group("server (defaults from configs/default.yaml)"), "server")
    _add_flags(parser.add_argument_group("cluster (defaults from configs/default.yaml)"), "cluster")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict] = {section: {} for section in SECTIONS}
    for name, value in vars(args).items():
        section, _, key = name.partition("_")
        if section in overrides and value is not None:
            overrides[section][key] = value
    return load_settings(getattr(args, "config", None), overrides=overrides)


def parse_size(text: str) -> tuple[int, int]:
    """'320x180' (width x height) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x180, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("session counts must be >= 1")
    return values


def parse_size_wh(text: str) -> tuple[int, int]:
    height, width = parse_size(text)
    return width, height
