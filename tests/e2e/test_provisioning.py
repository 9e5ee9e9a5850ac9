"""`aipc-chat serve` and `aipc-chat download` against a local stand-in for the hub (real huggingface_hub calls)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port
from tests.fakehub import FakeHub
from tests.waiting import HANG

pytestmark = pytest.mark.e2e
LLM_REPO, SD_REPO = "OpenVINO/tiny-r1-int4-ov", "OpenVINO/tiny-sd15-ov"


@pytest.fixture
def hub(demo_models: Path) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.add_repo(LLM_REPO, demo_models / "llm")
        fake.add_repo(SD_REPO, demo_models / "image")
        yield fake


def env_for(hub_url: str, models: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIPC_", "HF_"))}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(models / ".hf-home"), AIPC_MODELS_DIR=str(models),
               AIPC_DATA_DIR=str(data), AIPC_LLM_REPO=LLM_REPO, AIPC_IMAGE_REPO=SD_REPO, **extra)
    return env


def test_serve_downloads_missing_models_then_serves(hub: FakeHub, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "aipc_chat", "serve", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env_for(hub.endpoint, tmp_path / "models", tmp_path / "d"))
    url = f"http://127.0.0.1:{port}"
    states = set()
    try:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                r = httpx.get(f"{url}/ready", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            states |= {m["state"] for m in r.json()["models"].values()}
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        assert states & {"downloading", "loading"}
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert chat.status_code == 200 and chat.json()["model"] == "tiny-r1-int4-ov"
        assert (tmp_path / "models" / "hub" / "OpenVINO--tiny-r1-int4-ov" / "main" / "aipc_manifest.json").is_file()
    finally:
        proc.terminate()
        proc.wait(30)
    out = subprocess.run([sys.executable, "-m", "aipc_chat", "models"], capture_output=True, text=True, check=True,
                         env=env_for(hub.endpoint, tmp_path / "models", tmp_path / "d"))
    assert "OpenVINO/tiny-r1-int4-ov" in out.stdout and "OpenVINO/tiny-sd15-ov" in out.stdout
    assert all(" yes " in line for line in out.stdout.splitlines()[1:] if "tiny" in line)


def test_download_command_then_serve_offline(hub: FakeHub, tmp_path: Path) -> None:
    models = tmp_path / "models"
    env = env_for(hub.endpoint, models, tmp_path / "d")
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "download"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ready in" in done.stdout
    # Later, with no network: the verified models serve without asking the hub.
    port = free_port()
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.Popen([sys.executable, "-m", "aipc_chat", "serve", "--port", str(port)], env=offline,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("offline", [True, False])
def test_serve_without_models_or_network_fails_fast_and_clearly(tmp_path: Path, offline: bool) -> None:
    env = env_for("http://127.0.0.1:9", tmp_path / "models", tmp_path / "d")  # nothing listens on port 9
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--port", str(free_port())],
                          capture_output=True, text=True, env=env, timeout=60)
    assert time.monotonic() - t0 < 15
    assert done.returncode == 2
    assert "aipc-chat download" in done.stderr and "aipc-chat serve --demo" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_missing_model_with_auto_download_off_says_what_to_run(tmp_path: Path) -> None:
    env = env_for("http://127.0.0.1:9", tmp_path / "models", tmp_path / "d", AUTO_DOWNLOAD_MODELS="0")
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "serve"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2 and "aipc-chat download" in done.stderr and "Traceback" not in done.stderr
