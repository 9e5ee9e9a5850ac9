"""Regenerate the configuration table in docs/configuration.md from aipc_chat/settings.py (tests/unit/test_readme.py
checks it)."""

from __future__ import annotations

import re
from pathlib import Path

from aipc_chat.settings import config_table

CONFIG_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

if __name__ == "__main__":
    text = CONFIG_DOC.read_text(encoding="utf-8")
    pattern = re.compile(r"(<!-- config-table[^\n]*-->\n).*?(\n<!-- /config-table -->)", re.DOTALL)
    CONFIG_DOC.write_text(pattern.sub(lambda m: m.group(1) + config_table() + m.group(2), text), encoding="utf-8")
