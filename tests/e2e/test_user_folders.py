"""An installed aipc-chat keeps models and data in the per-user folder, never in the working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def fresh_user(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """An empty working folder, a fresh HOME, no AIPC_* settings; and where the per-user folder must be."""
    cwd, home = tmp_path / "empty", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIPC_", "XDG_"))}
    env.update(HOME=str(home), USERPROFILE=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return cwd, env, home / ".local" / "share" / "aipc-chat"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the per-user folder is checked at its Linux place")
def test_demo_models_go_to_the_per_user_folder(tmp_path: Path) -> None:
    cwd, env, user = fresh_user(tmp_path)
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "demo-models", "--only", "image"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(cwd.iterdir()) == []  # nothing in the working folder
    assert (user / "models" / "demo" / "image" / "model_index.json").is_file()
    assert str(user / "models" / "demo") in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the per-user folder is checked at its Linux place")
def test_serve_uses_the_per_user_folder_and_names_commands_not_make_targets(tmp_path: Path) -> None:
    cwd, env, user = fresh_user(tmp_path)
    env.update(AUTO_DOWNLOAD_MODELS="0")
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--port", str(free_port())], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and list(cwd.iterdir()) == []
    assert (user / "data" / "images").is_dir()  # the data folder was made (and checked) in the per-user folder
    said = done.stderr.strip().splitlines()[-1]
    assert str(user / "models") in said and "aipc-chat download" in said and "make " not in said
    custom = tmp_path / "elsewhere"
    subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--port", str(free_port()), "--models-dir",
                    str(custom / "m"), "--data-dir", str(custom / "d")], cwd=cwd, env=env, capture_output=True,
                   text=True, timeout=120, check=False)
    assert (custom / "d" / "images").is_dir() and list(cwd.iterdir()) == []
