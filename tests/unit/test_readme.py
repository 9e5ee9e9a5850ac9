"""The README and docs/: the configuration table is the one generated from Settings, the first screen holds what
a newcomer needs, and every relative link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aipc_chat.settings import Settings, config_table

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIG_DOC = REPO / "docs" / "configuration.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]


def test_config_table_matches_settings() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    start = text.index("<!-- config-table")
    block = text[text.index("\n", start) + 1 : text.index("<!-- /config-table -->")].strip()
    assert block == config_table(), "run: python scripts/update_readme_config.py"
    for name in Settings.model_fields:
        assert f"`AIPC_{name.upper()}`" in block


def test_the_first_screen_holds_what_a_newcomer_needs() -> None:
    """What it is, a picture of the page, requirements, the two set-up commands with timings, the contents."""
    first = "\n".join(README.read_text(encoding="utf-8").splitlines()[:80])
    assert "![" in first and "docs/screenshot.png" in first
    for needed in ("## Requirements", "Python", "Disk", "RAM", "## Set up", "make demo", "make test", "Measured on",
                   "## Contents", "aipc-chat doctor", "random-weight"):
        assert needed in first, needed
    assert "make run" in README.read_text(encoding="utf-8")
    assert "TEST_TIME_LINE" not in first


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        assert linked.exists(), f"{doc.name}: {target} (no such file)"
        if anchor:
            assert anchor in anchors(linked), f"{doc.name}: {target} (no such heading)"
