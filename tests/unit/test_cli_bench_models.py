"""`aipc-chat bench-models` builds what it is asked for into <models>/bench (builders replaced: they take minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipc_chat import cli
from aipc_chat.tooling import bench_models


@pytest.mark.parametrize(("args", "built"), [
    ([], ["llm", "image"]),
    (["--torch"], ["llm", "image", "image-torch"]),
    (["--only", "image-torch"], ["image-torch"]),
    (["--only", "llm", "--torch"], ["llm"]),
])
def test_bench_models_builds_the_asked_models(args: list[str], built: list[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Path, bool]] = []
    for kind, name in (("llm", "build_bench_llm"), ("image", "build_bench_image"),
                       ("image-torch", "build_bench_image_torch")):
        monkeypatch.setattr(bench_models, name,
                            lambda out, *, force, kind=kind: calls.append((kind, out, force)) or out)
    assert cli.main(["bench-models", "--models-dir", str(tmp_path), *args]) == 0
    assert [c[0] for c in calls] == built
    assert all(out == tmp_path / "bench" / kind and force is False for kind, out, force in calls)


def test_a_failed_demo_build_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """DemoModelError belongs to the error tree the CLI reports: a clear line, no traceback."""
    from aipc_chat.errors import DemoModelError
    from aipc_chat.tooling import demo_llm

    def broken(out: Path, *, force: bool = False) -> Path:
        raise DemoModelError(f"refusing to replace {out}: it exists and is not a demo LLM folder")

    monkeypatch.setattr(demo_llm, "build_demo_llm", broken)
    assert cli.main(["demo-models", "--only", "llm", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aipc-chat: refusing to replace") and "Traceback" not in err
