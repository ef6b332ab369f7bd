"""Command-line flags: one per declared setting, with the declaration's help and check."""

from __future__ import annotations

import argparse

import pytest

from streamvsr.config import SECTIONS, ConfigError, Settings, declared, yaml_text
from streamvsr.flags import add_engine_flags, add_server_flags, flag_name, settings_from_args

# The flags from before they were derived (scripts and tests use them).
KNOWN_FLAGS = (
    "--engine", "--model", "--revision", "--device", "--dtype", "--steps", "--flow-model",
    "--flow-resolution", "--flow-weights", "--attention", "--unet", "--controlnet", "--vae",
    "--vae-tile", "--channels-last", "--sdpa-backend", "--compile", "--cudnn-benchmark",
    "--warmup-sizes", "--seed", "--host", "--port", "--tls-cert", "--tls-key", "--max-sessions",
    "--max-batch", "--whip-token", "--public-ip", "--ice-host-addresses", "--h264-encoder",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser()
    add_engine_flags(result)
    add_server_flags(result)
    return result


def flag_text(value) -> str:
    """A default as written in YAML, as one writes it on the command line."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, (list, dict)):  # structured settings take YAML text
        return yaml_text(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_each_setting_has_a_flag_that_sets_it() -> None:
    argv, dests = [], []
    for section in SECTIONS:
        for setting in declared(section):
            if setting.metadata["default"] is not None:  # null cannot be written as a flag
                argv += [flag_name(setting), flag_text(setting.metadata["default"])]
                dests.append(f"{section}_{setting.name}")
    args = parser().parse_args(argv)
    assert all(vars(args)[dest] is not None for dest in dests)
    assert settings_from_args(args) == Settings()


def test_the_flags_keep_their_names_and_help() -> None:
    options = parser()._option_string_actions
    assert set(KNOWN_FLAGS) <= set(options)
    assert options["--engine"].dest == "engine_kind"
    assert options["--flow-model"].help == "optical flow network: raft_large or raft_small"


def test_numbers_are_parsed_and_other_values_checked() -> None:
    argv = "--steps 2 --max-wait-ms 2.5 --port 9000 --channels-last true --warmup-sizes 64x32,32x16"
    settings = settings_from_args(parser().parse_args(argv.split()))
    assert (settings.engine.steps, settings.engine.channels_last) == (2, True)
    assert (settings.server.max_wait_ms, settings.server.port) == (2.5, 9000)
    assert settings.engine.warmup_sizes == ((32, 64), (16, 32))
    argv = ["--ice-servers", "[{urls: turn:t.example:3478, username: u, credential: p}]"]
    [server] = settings_from_args(parser().parse_args(argv)).server.ice_servers
    assert server == {"urls": ["turn:t.example:3478"], "username": "u", "credential": "p"}


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--dtype", "fp8", "engine.dtype"),
        ("--steps", "0", "engine.steps"),
        ("--channels-last", "maybe", "engine.channels_last"),
        ("--warmup-sizes", "320by180", "engine.warmup_sizes"),
        ("--port", "70000", "server.port"),
        ("--max-wait-ms", "-1", "server.max_wait_ms"),
        ("--ice-servers", "http://example.org", "server.ice_servers"),
        ("--ice-servers", "[{urls: ", "server.ice_servers"),
        ("--x264-preset", "turbo", "server.x264_preset"),
    ],
)
def test_a_bad_flag_value_names_the_key(flag: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} .*\(from command line\)"):
        settings_from_args(parser().parse_args([flag, value]))
