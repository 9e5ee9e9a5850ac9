"""The lean serving path: no conversion library is imported to serve chat and pictures, and a server with only one
kind of model serves it (the other's routes answer a clear 503 that names the setting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port, start_server

pytestmark = pytest.mark.e2e
HEAVY = ("torch", "diffusers", "transformers", "optimum", "nncf", "huggingface_hub")  # the last: downloads only

SERVE_AND_LIST_MODULES = """
import json, sys
from fastapi.testclient import TestClient
from aipc_chat.api.app import create_app
from aipc_chat.settings import Settings

settings = Settings(demo=True, models_dir=sys.argv[1], data_dir=sys.argv[2])
with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
    for _ in range(600):
        if client.get("/ready").status_code == 200:
            break
        import time; time.sleep(0.1)
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                     "max_tokens": 8})
    picture = client.post("/v1/images/generations", json={"prompt": "a red fox", "size": "64x64",
                                                          "response_format": "b64_json"})
print(json.dumps({"chat": chat.status_code, "picture": picture.status_code,
                  "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def test_serving_imports_no_conversion_library(demo_models: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SERVE_AND_LIST_MODULES, str(demo_models.parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["chat"] == 200 and seen["picture"] == 200  # both served, through openvino-genai
    assert "openvino_genai" in seen["modules"]
    assert [name for name in HEAVY if name in seen["modules"]] == []


def test_chat_only(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_IMAGE_REPO": "none"})  # --demo: the LLM is the demo one
    try:
        ready = httpx.get(f"{server.base_url}/ready").json()["models"]
        assert ready["llm"]["state"] == "ready" and ready["image"]["state"] == "disabled"
        r = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "a fox", "size": "64x64"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_served"
        assert "AIPC_IMAGE_PATH" in r.json()["error"]["message"] and "retry-after" not in r.headers
        turn = httpx.post(f"{server.base_url}/chat", timeout=120, json={
            "user_id": "ann", "message": "Draw me a picture of a cat", "stream": False})
        assert turn.status_code == 200, turn.text
        body = turn.json()
        assert body["assistant_response"] and not body.get("image_names") and body.get("image_error") is None
        assert "not serving pictures" in server.log()
    finally:
        server.stop()


def test_image_only(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_LLM_REPO": "none"})
    try:
        r = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "a fox", "size": "64x64",
                                                                         "response_format": "b64_json"}, timeout=120)
        assert r.status_code == 200
        assert httpx.get(f"{server.base_url}/api/tags").json() == {"models": []}
        assert [m["type"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]] == ["image"]
        chat = httpx.post(f"{server.base_url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "Hi"}]})
        assert chat.status_code == 503 and "AIPC_LLM_PATH" in chat.json()["error"]["message"]
        assert "not serving chat" in server.log()
        lcm = httpx.post(f"{server.base_url}/sdapi/v1/txt2img", timeout=120, json={  # no guidance: a picture, no 500
            "prompt": "a fox", "negative_prompt": "blur", "cfg_scale": 1, "sampler_name": "LCM", "steps": 2,
            "width": 64, "height": 64})
        assert lcm.status_code == 200, lcm.text
    finally:
        server.stop()


def test_a_missing_default_image_model_leaves_chat_served(demo_models: Path, tmp_path: Path) -> None:
    """AIPC_LLM_PATH alone (the image model left on its default, not downloaded, downloads off): chat starts."""
    server = start_server(tmp_path / "models", tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_LLM_PATH": str(demo_models / "llm"), "AIPC_AUTO_DOWNLOAD_MODELS": "false"},
                          demo=False)
    try:
        ready = httpx.get(f"{server.base_url}/ready").json()["models"]
        assert ready["image"]["state"] == "disabled" and "aipc-chat download" in ready["image"]["error"]
    finally:
        server.stop()


def test_nothing_to_serve_stops_the_start(demo_models: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--demo", "--port", str(free_port())],
                          capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "AIPC_LLM_REPO": "none",
                          "AIPC_IMAGE_REPO": "none", "AIPC_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "nothing to serve" in done.stderr and "Traceback" not in done.stderr
