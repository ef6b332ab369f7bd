"""Settings: ``configs/default.yaml``, then a user YAML file, then environment, then CLI flags.

Every layer is validated against the same schema; an error names the bad key and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
ENV_PREFIX = "STREAMVSR_"


class ConfigError(ValueError):
    """A setting is unknown or has a value of the wrong kind."""


def _choice(*allowed: str):
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return check


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number >= 1")
    return value


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise ValueError("must be a string or null")


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError("must be a whole number or null")


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


@dataclass(frozen=True)
class EngineSettings:
    kind: str = "auto"
    model: str = "Jamichsu/Stream-DiffVSR"
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    steps: int = 4
    flow_model: str = "raft_large"
    flow_resolution: str = "hr"
    flow_weights: str | None = None
    attention: str = "sdpa"
    unet: str | None = None
    controlnet: str | None = None
    vae: str | None = None
    seed: int | None = 0

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of ``engine.load_engine`` (all but ``kind``, ``model``, ``seed``)."""
        skip = {"kind", "model", "seed"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


ENGINE_SCHEMA = {
    "kind": _choice("auto", "stream-diffvsr", "bicubic"),
    "model": _str,
    "revision": _optional_str,
    "device": _str,
    "dtype": _choice("auto", "fp32", "fp16", "bf16"),
    "steps": _positive_int,
    "flow_model": _choice("raft_large", "raft_small"),
    "flow_resolution": _choice("hr", "lr"),
    "flow_weights": _optional_str,
    "attention": _choice("sdpa", "xformers"),
    "unet": _optional_str,
    "controlnet": _optional_str,
    "vae": _optional_str,
    "seed": _optional_int,
}
SECTIONS = {"engine": (EngineSettings, ENGINE_SCHEMA)}


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings = field(default_factory=EngineSettings)


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
    return _apply(settings, overrides or {}, "command line")


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


def _apply(settings: Settings, layer: Mapping[str, Any], source: str) -> Settings:
    for section, values in layer.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section {section!r} (from {source}); known: {list(SECTIONS)}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"section {section!r} (from {source}) must be a mapping")
        _, schema = SECTIONS[section]
        changes = {}
        for key, value in values.items():
            if key not in schema:
                raise ConfigError(
                    f"unknown setting {section}.{key} (from {source}); known: {', '.join(schema)}"
                )
            try:
                changes[key] = schema[key](value)
            except ValueError as exc:
                raise ConfigError(f"{section}.{key} {exc}, got {value!r} (from {source})") from exc
        settings = replace(settings, **{section: replace(getattr(settings, section), **changes)})
    return settings
