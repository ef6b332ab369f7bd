"""Settings: defaults from configs/default.yaml, layered file, environment and flags, validation."""

from __future__ import annotations

import pytest

from streamvsr.config import ConfigError, EngineSettings, load_settings


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


def test_engine_options_fit_load_engine() -> None:
    import inspect

    from streamvsr.engine.loading import EngineOptions

    options = EngineSettings().engine_options()
    assert set(options) == set(inspect.signature(EngineOptions).parameters)
