"""The README's configuration table is the one generated from Settings."""

from __future__ import annotations

from pathlib import Path

from aipc_chat.settings import Settings, config_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_table_matches_settings() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- config-table")
    block = text[text.index("\n", start) + 1 : text.index("<!-- /config-table -->")].strip()
    assert block == config_table(), "run: python scripts/update_readme_config.py"
    for name in Settings.model_fields:
        assert f"`AIPC_{name.upper()}`" in block


def test_readme_shows_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text and "make run" in text
