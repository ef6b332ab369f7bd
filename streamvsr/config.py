"""Settings: ``configs/default.yaml``, then a user YAML file, then environment, then CLI flags.

Each setting is declared once, by ``setting`` (``engine/options.py``, ``server/settings.py`` and
``EngineSettings`` below). Every layer is checked by the declared checks; an error names the bad
key and where it came from. The flags (``streamvsr.flags``), ``configs/default.yaml`` and README's
settings tables (``streamvsr.settings_docs``) are derived from the same declarations.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from streamvsr.engine.architecture import MODEL_ID
from streamvsr.engine.options import (
    EngineOptions,
    choice,
    non_empty_str,
    optional_int,
    setting,
    str_list,
)
from streamvsr.server.cluster.settings import ClusterSettings
from streamvsr.server.settings import ServerSettings

DEFAULT_CONFIG = Path(str(resources.files("streamvsr.configs") / "default.yaml"))
ENV_PREFIX = "STREAMVSR_"


class ConfigError(ValueError):
    """A setting is unknown or has a value of the wrong kind."""


def sizes(value: Any) -> tuple[tuple[int, int], ...]:
    """["320x180", "480x270"] (or one comma-separated string) -> ((180, 320), (270, 480))."""
    result = []
    for text in str_list(value):
        width, sep, height = text.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise ValueError(f"sizes are WIDTHxHEIGHT (e.g. 320x180), got {text!r}")
        result.append((int(height), int(width)))
    return tuple(result)


DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def device_list(value: Any) -> tuple[str, ...]:
    """[cuda:0, cuda:1], [auto] or []."""
    devices = str_list(value)
    if devices == ("auto",):
        return devices
    bad = [d for d in devices if not DEVICE.fullmatch(d)]
    if bad:
        raise ValueError(f"must list cpu, mps, cuda or cuda:N (or be auto alone); not {bad}")
    return devices


@dataclass(frozen=True)
class EngineSettings(EngineOptions):
    """Which engine runs on which model, with ``load_engine``'s options (it is the
    ``EngineOptions`` the engine is handed), and what the server seeds and warms up."""

    kind: str = setting(
        "auto",
        "stream-diffvsr, bicubic, or auto: Stream-DiffVSR when a GPU and the weights are "
        "available, else bicubic (saying why)",
        choice("auto", "stream-diffvsr", "bicubic"),
        flag="--engine",
    )
    model: str = setting(
        MODEL_ID, "Hugging Face model id or local checkpoint folder", non_empty_str
    )
    seed: int | None = setting(
        0,
        "noise seed of the first session; later sessions use seed+1, seed+2, ... (null: random)",
        optional_int,
    )
    devices: tuple[str, ...] = setting(
        [],
        "devices that each run a copy of the engine, with a GPU worker each (cuda:0, cuda:1; "
        "comma-separated on the command line); a new session goes to the one with the most "
        "free capacity. auto: every visible GPU; []: engine.device alone",
        device_list,
    )
    warmup_sizes: tuple[tuple[int, int], ...] = setting(
        ["320x180"],
        "LR sizes (WIDTHxHEIGHT, comma-separated on the command line) compiled, and CUDA graphs "
        "recorded, at start for every batch size up to server.max_batch; other sizes run eager",
        sizes,
    )


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings = field(default_factory=EngineSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


SECTIONS = {"engine": EngineSettings, "server": ServerSettings, "cluster": ClusterSettings}


def declared(section: str) -> list[Field]:
    """A section's settings, its own before those it inherits (kind and model before the
    engine's options)."""
    cls = SECTIONS[section]
    own = inspect.get_annotations(cls)
    return sorted(fields(cls), key=lambda f: f.name not in own)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge the layers and validate. ``overrides``: CLI values, {"engine": {"steps": 2}}."""
    settings = Settings()
    settings = _apply(settings, _read_yaml(DEFAULT_CONFIG), str(DEFAULT_CONFIG))
    if path is not None:
        settings = _apply(settings, _read_yaml(Path(path)), str(path))
    settings = _apply(settings, _from_env(os.environ if env is None else env), "environment")
    settings = _apply(settings, overrides or {}, "command line")
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    server = settings.server
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key must be given together")
    if (server.udp_port_min == 0) != (server.udp_port_max == 0) or (
        server.udp_port_min > server.udp_port_max
    ):
        raise ConfigError(
            "server.udp_port_min and server.udp_port_max must both be 0 (any port) or a range "
            f"min <= max, got {server.udp_port_min}..{server.udp_port_max}"
        )
    cluster = settings.cluster
    if cluster.redis_url and not cluster.advertise_url and server.host in ("0.0.0.0", "::"):
        raise ConfigError(
            "cluster.advertise_url is needed with cluster.redis_url when server.host is "
            f"{server.host}: the URL that clients and the other nodes reach this node at"
        )
    if not server.min_bitrate <= server.start_bitrate <= server.max_bitrate:
        raise ConfigError(
            "server bitrates must satisfy min_bitrate <= start_bitrate <= max_bitrate"
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """STREAMVSR_ENGINE__DTYPE=bf16 -> {"engine": {"dtype": "bf16"}} (values parsed as YAML)."""
    layer: dict[str, dict[str, Any]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        layer.setdefault(section, {})[key] = yaml.safe_load(raw) if raw else None
    return layer


def environment(section: str, values: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables that set ``values`` (written as in a settings file)."""
    return {
        f"{ENV_PREFIX}{section.upper()}__{key.upper()}": yaml_text(value)
        for key, value in values.items()
    }


def yaml_text(value: Any) -> str:
    """``value`` as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000)
    return text.removesuffix("\n").removesuffix("\n...")


def _apply(settings: Settings, layer: Mapping[str, Any], source: str) -> Settings:
    for section, values in layer.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section {section!r} (from {source}); known: {list(SECTIONS)}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"section {section!r} (from {source}) must be a mapping")
        known = {f.name: f for f in declared(section)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(
                    f"unknown setting {section}.{key} (from {source}); known: {', '.join(known)}"
                )
            try:
                changes[key] = known[key].metadata["check"](value)
            except ValueError as exc:
                raise ConfigError(f"{section}.{key} {exc}, got {value!r} (from {source})") from exc
        settings = replace(settings, **{section: replace(getattr(settings, section), **changes)})
    return settings
