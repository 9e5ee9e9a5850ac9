"""The layering holds: engines know neither HTTP nor asyncio (the remote engine runs httpx on a loop of its own),
and the API side reaches the engines through their contract only, never a pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "aipc_chat"
ENGINE_HELPERS = {"aipc_chat.engines.contract", "aipc_chat.engines.stream", "aipc_chat.engines.memory",
                  "aipc_chat.engines.store"}  # plain types and helpers the API side may use


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def test_engines_import_no_http_or_asyncio() -> None:
    offenders = {path.name: sorted(m for m in imports(path) if top(m) in {"asyncio", "fastapi", "starlette", "httpx"})
                 for path in (PACKAGE / "engines").glob("*.py") if path.name != "remote.py"}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_api_side_reaches_engines_through_the_contract_only() -> None:
    files = [*(PACKAGE / "api").rglob("*.py"), *(PACKAGE / "serving").rglob("*.py"), PACKAGE / "orchestrator.py"]
    assert len(files) > 20
    offenders: dict[str, list[str]] = {}
    for path in files:
        bad = sorted(m for m in imports(path) if top(m) in {"openvino", "openvino_genai", "optimum", "diffusers"}
                     or (m.startswith("aipc_chat.engines") and m not in ENGINE_HELPERS))
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = bad
    assert offenders == {}
