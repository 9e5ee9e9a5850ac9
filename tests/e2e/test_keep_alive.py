"""Idle unload on a live server: AIPC_KEEP_ALIVE lets both models go, /ready stays 200 and says so, and the next
chat and picture load them again."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e


def states(base_url: str) -> tuple[int, dict[str, str]]:
    r = httpx.get(f"{base_url}/ready")
    return r.status_code, {kind: m["state"] for kind, m in r.json()["models"].items()}


def test_idle_models_unload_and_come_back(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_KEEP_ALIVE": "1s"})
    rss = psutil.Process(server.proc.pid)
    try:
        chat = httpx.post(f"{server.base_url}/chat", timeout=60, json={
            "user_id": "u", "message": "Draw a fox", "image": "always", "image_options": {"steps": 2, "size": "64x64"}})
        assert chat.status_code == 200 and chat.json()["image_state"] == "done"
        busy_rss = rss.memory_info().rss
        deadline = time.monotonic() + 15
        while states(server.base_url)[1] != {"llm": "unloaded", "image": "unloaded"}:
            assert time.monotonic() < deadline, states(server.base_url)
            time.sleep(0.2)
        assert states(server.base_url)[0] == 200  # unloaded models are servable: /ready stays 200
        assert rss.memory_info().rss < busy_rss - 20e6, (busy_rss, rss.memory_info().rss)  # memory given back
        again = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert again.status_code == 200 and again.json()["choices"][0]["message"]
        picture = httpx.post(f"{server.base_url}/v1/images/generations", timeout=60,
                             json={"prompt": "a red cube", "size": "64x64", "num_inference_steps": 2})
        assert picture.status_code == 200 and picture.json()["data"]
        log = server.log()  # each loaded at start, then again on demand after its idle unload
        assert log.count("llm model loaded in") == 2 and log.count("image model loaded in") == 2, log
    finally:
        server.stop()
