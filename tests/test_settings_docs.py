"""configs/default.yaml and README's settings tables are what the declarations render."""

from __future__ import annotations

from pathlib import Path

from streamvsr.config import DEFAULT_CONFIG
from streamvsr.settings_docs import readme_with_tables, render_default_yaml

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "differs from the declarations: run `.venv/bin/python -m streamvsr.settings_docs`"


def test_default_yaml_is_rendered_from_the_declarations() -> None:
    assert DEFAULT_CONFIG.read_text() == render_default_yaml(), f"{DEFAULT_CONFIG} {REGENERATE}"


def test_readme_settings_tables_are_rendered_from_the_declarations() -> None:
    readme = README.read_text()
    assert readme_with_tables(readme) == readme, f"README.md's settings tables {REGENERATE}"
