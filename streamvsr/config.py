"""Settings: ``configs/default.yaml``, then a user YAML file, then environment, then CLI flags.

Every layer is validated against the same schema; an error names the bad key and where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from streamvsr.engine.acceleration import COMPILE_BACKENDS, COMPILE_MODES, SDPA_BACKENDS
from streamvsr.engine.architecture import MODEL_ID
from streamvsr.engine.loading import EngineOptions

DEFAULT_CONFIG = Path(str(resources.files("streamvsr.configs") / "default.yaml"))
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


def _non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("must be a number >= 0")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _ice_servers(value: Any) -> tuple[dict[str, Any], ...]:
    """[{urls: stun:host:3478}, {urls: [turn:...], username: u, credential: p}]"""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of {urls, username, credential} entries")
    servers = []
    for entry in value:
        if isinstance(entry, str):
            entry = {"urls": entry}
        if not isinstance(entry, dict) or "urls" not in entry:
            raise ValueError("each entry needs urls (e.g. stun:stun.example.org:3478)")
        unknown = set(entry) - {"urls", "username", "credential"}
        if unknown:
            raise ValueError(f"unknown ICE server fields {sorted(unknown)}")
        urls = [entry["urls"]] if isinstance(entry["urls"], str) else list(entry["urls"])
        if not all(
            isinstance(u, str) and u.split(":", 1)[0] in ("stun", "turn", "turns") for u in urls
        ):
            raise ValueError(f"ICE server urls must start with stun:, turn: or turns:, got {urls}")
        servers.append({**entry, "urls": urls})
    return tuple(servers)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError("must be true or false")


def _sizes(value: Any) -> tuple[tuple[int, int], ...]:
    """["320x180", "480x270"] (or one comma-separated string) -> ((180, 320), (270, 480))."""
    sizes = []
    for text in _str_list(value):
        width, sep, height = text.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise ValueError(f"sizes are WIDTHxHEIGHT (e.g. 320x180), got {text!r}")
        sizes.append((int(height), int(width)))
    return tuple(sizes)


def _bool_or_auto(value: Any) -> bool | None:
    """true/false, or auto (null): the engine decides (e.g. on for CUDA)."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    try:
        return _bool(value)
    except ValueError:
        raise ValueError("must be true, false or auto") from None


def _compile_mode(value: Any) -> str:
    """A torch.compile mode; YAML reads a bare off/on as false/true."""
    if isinstance(value, bool):
        value = "default" if value else "off"
    return _choice(*COMPILE_MODES)(value)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


@dataclass(frozen=True)
class EngineSettings(EngineOptions):
    """``engine.load_engine``'s options plus which engine runs, the model and the seed."""

    kind: str = "auto"
    model: str = MODEL_ID
    seed: int | None = 0
    warmup_sizes: tuple[tuple[int, int], ...] = ((180, 320),)  # (height, width) LR, to compile

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of ``engine.load_engine`` (everything but the model)."""
        return {f.name: getattr(self, f.name) for f in fields(EngineOptions)}


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: str | None = None
    tls_key: str | None = None
    max_sessions: int = 8
    max_batch: int = 8
    max_wait_ms: float = 0.0
    max_input_width: int = 1280
    max_input_height: int = 720
    max_body_bytes: int = 65536
    idle_timeout_s: float = 15.0
    whip_token: str | None = None
    cors_origin: str = "*"
    ice_servers: tuple[dict[str, Any], ...] = ()
    ice_host_addresses: tuple[str, ...] = ()
    public_ip: str | None = None
    udp_port_min: int = 0
    udp_port_max: int = 0
    video_codec: str = "h264"
    h264_encoder: str = "auto"
    x264_preset: str = "veryfast"
    min_bitrate: int = 1_000_000
    start_bitrate: int = 4_000_000
    max_bitrate: int = 12_000_000


SERVER_SCHEMA = {
    "host": _str,
    "port": _port,
    "tls_cert": _optional_str,
    "tls_key": _optional_str,
    "max_sessions": _positive_int,
    "max_batch": _positive_int,
    "max_wait_ms": _non_negative,
    "max_input_width": _positive_int,
    "max_input_height": _positive_int,
    "max_body_bytes": _positive_int,
    "idle_timeout_s": _non_negative,
    "whip_token": _optional_str,
    "cors_origin": _str,
    "ice_servers": _ice_servers,
    "ice_host_addresses": _str_list,
    "public_ip": _optional_str,
    "udp_port_min": _port,
    "udp_port_max": _port,
    "video_codec": _choice("h264", "vp8"),
    "h264_encoder": _choice("auto", "x264", "nvenc"),
    "x264_preset": _choice(
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"
    ),
    "min_bitrate": _positive_int,
    "start_bitrate": _positive_int,
    "max_bitrate": _positive_int,
}

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
    "vae_tile": _non_negative_int,
    "channels_last": _bool,
    "sdpa_backend": _choice(*SDPA_BACKENDS),
    "compile": _compile_mode,
    "compile_backend": _choice(*COMPILE_BACKENDS),
    "cudnn_benchmark": _bool_or_auto,
    "warmup_sizes": _sizes,
    "seed": _optional_int,
}
SECTIONS = {
    "engine": (EngineSettings, ENGINE_SCHEMA),
    "server": (ServerSettings, SERVER_SCHEMA),
}


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings = field(default_factory=EngineSettings)
    server: ServerSettings = field(default_factory=ServerSettings)


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
