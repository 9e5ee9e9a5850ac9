"""The package stays importable on Windows: no module imports a POSIX-only module when it is loaded."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

POSIX_ONLY = {"resource", "fcntl", "termios", "pwd", "grp", "posix"}


def top_level_posix_imports(path: Path, root: Path = REPO) -> list[str]:
    """POSIX-only modules imported by the module's own body (not inside a function or a try block)."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [f"{path.relative_to(root).as_posix()}:{node.lineno} imports {n}" for n in names
                  if n.split(".")[0] in POSIX_ONLY]
    return found


def test_no_module_imports_posix_only_modules_at_load() -> None:
    files = sorted((REPO / "aipc_chat").rglob("*.py"))
    assert len(files) > 40
    assert [hit for path in files for hit in top_level_posix_imports(path)] == []


def test_the_check_sees_such_an_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("import os\nimport resource\n\ndef f():\n    import fcntl\n")
    assert top_level_posix_imports(module, tmp_path) == ["probe.py:2 imports resource"]
