"""Settings: declared once; defaults from configs/default.yaml, layered file, environment and
flags, each validated by the declared check."""

from __future__ import annotations

from dataclasses import Field, fields

import pytest
import yaml

from streamvsr.config import (
    SECTIONS,
    ConfigError,
    EngineSettings,
    Settings,
    declared,
    environment,
    load_settings,
)
from streamvsr.engine.options import EngineOptions

SETTINGS = [(section, setting) for section in SECTIONS for setting in declared(section)]
IDS = [f"{section}.{setting.name}" for section, setting in SETTINGS]


def test_defaults_come_from_the_shipped_yaml() -> None:
    settings = load_settings(env={})
    assert settings.engine == EngineSettings()
    assert settings.engine.model == "Jamichsu/Stream-DiffVSR"
    assert settings.engine.steps == 4


def test_layers_apply_in_order(tmp_path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("engine:\n  steps: 3\n  dtype: fp16\n  flow_resolution: lr\n")
    env = {"STREAMVSR_ENGINE__DTYPE": "bf16", "STREAMVSR_ENGINE__STEPS": "2", "OTHER": "x"}
    settings = load_settings(user, env=env, overrides={"engine": {"steps": 6}})
    assert settings.engine.flow_resolution == "lr"  # file
    assert settings.engine.dtype == "bf16"  # environment beats file
    assert settings.engine.steps == 6  # flag beats environment


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"engine": {"dtpye": "fp16"}}, "unknown setting engine.dtpye"),
        ({"engine": {"steps": 0}}, "engine.steps must be a whole number >= 1"),
        ({"engine": {"dtype": "fp8"}}, "engine.dtype must be one of"),
        ({"engine": {"kind": "esrgan"}}, "engine.kind must be one of"),
        ({"engnie": {}}, "unknown section 'engnie'"),
    ],
)
def test_bad_values_name_the_key(layer, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(env={}, overrides=layer)
    assert "command line" in str(info.value)


def test_bad_environment_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"engine.steps .*environment"):
        load_settings(env={"STREAMVSR_ENGINE__STEPS": "many"})


def test_bad_files_are_reported(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("engine: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken, env={})


def test_engine_settings_are_the_options_the_engine_is_handed() -> None:
    settings = load_settings(env={}, overrides={"engine": {"steps": 2}}).engine
    assert isinstance(settings, EngineOptions) and settings.steps == 2
    assert {f.name for f in fields(EngineOptions)} <= {f.name for f in declared("engine")}


@pytest.mark.parametrize(("section", "setting"), SETTINGS, ids=IDS)
def test_each_setting_is_declared_with_help_and_a_check(section: str, setting: Field) -> None:
    text = setting.metadata["help"]
    assert text and "|" not in text  # one cell of README's table
    assert setting.metadata["check"](setting.metadata["default"]) == setting.default
    for value in getattr(setting.metadata["check"], "choices", ()):
        assert value in text, f"the help of {section}.{setting.name} does not name {value}"


def test_each_setting_has_an_environment_variable() -> None:
    env = {}
    for section in SECTIONS:
        env |= environment(section, {f.name: f.metadata["default"] for f in declared(section)})
    assert len(env) == len(SETTINGS)
    assert "STREAMVSR_ENGINE__FLOW_MODEL" in env and "STREAMVSR_SERVER__UDP_PORT_MAX" in env
    assert load_settings(env=env) == Settings()
    env = environment("server", {"ice_servers": [{"urls": "stun:a.example:3478"}], "port": 9000})
    server = load_settings(env=env).server
    assert server.ice_servers == ({"urls": ["stun:a.example:3478"]},) and server.port == 9000


@pytest.mark.parametrize(("section", "setting"), SETTINGS, ids=IDS)
def test_a_bad_value_from_a_file_or_the_environment_names_the_key(
    section: str, setting: Field, tmp_path
) -> None:
    bad = {"no": "such value"}  # what no setting takes
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({section: {setting.name: bad}}))
    env = environment(section, {setting.name: bad})
    for layer, source in [({"path": path, "env": {}}, str(path)), ({"env": env}, "environment")]:
        with pytest.raises(ConfigError) as info:
            load_settings(**layer)
        message = str(info.value)
        assert message.startswith(f"{section}.{setting.name} ") and f"(from {source})" in message
