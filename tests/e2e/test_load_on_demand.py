"""AIPC_LOAD_ON_START=false on a live server: ready at once with both models unloaded, /v1/models lists them without
loading them, and the first chat and the first picture load them (resident_mb in /ready)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import ollama
import pytest

from tests.e2e.conftest import start_server
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def models(base_url: str) -> dict[str, dict[str, object]]:
    r = httpx.get(f"{base_url}/ready")
    assert r.status_code == 200, r.text
    return dict(r.json()["models"])


def test_ready_at_once_and_each_model_loads_on_first_use(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_LOAD_ON_START": "false"})
    try:
        # Ready before any model loads (how soon is bench_startup.py's to measure, not a test's).
        assert "model loaded in" not in server.log(), server.log()
        first = models(server.base_url)
        assert {kind: m["state"] for kind, m in first.items()} == {"llm": "unloaded", "image": "unloaded"}
        assert first["llm"]["resident_mb"] is None
        listed = httpx.get(f"{server.base_url}/v1/models").json()["data"]
        assert [(m["id"], m["state"]) for m in listed] == [(first["llm"]["model"], "unloaded"),
                                                          (first["image"]["model"], "unloaded")]
        assert models(server.base_url)["llm"]["state"] == "unloaded"  # listing did not load it
        chat = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert chat.status_code == 200, chat.text
        after_chat = models(server.base_url)
        assert after_chat["llm"]["state"] == "ready" and after_chat["image"]["state"] == "unloaded"
        assert isinstance(after_chat["llm"]["resident_mb"], float)
        picture = httpx.post(f"{server.base_url}/v1/images/generations", timeout=60,
                             json={"prompt": "a red cube", "size": "64x64", "num_inference_steps": 2})
        assert picture.status_code == 200 and picture.json()["data"]
        assert models(server.base_url)["image"]["state"] == "ready"
        memory = httpx.get(f"{server.base_url}/ready").json()["memory"]
        assert memory["limit_mb"] is None and memory["models_mb"] > 0 and memory["process_rss_mb"] > 0
        # A request's own keep_alive (Ollama's field) overrides AIPC_KEEP_ALIVE (-1 here) for its model.
        assert models(server.base_url)["llm"]["keep_alive_left"] is None  # never
        chat = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "keep_alive": 0})
        assert chat.status_code == 200, chat.text
        wait_until(lambda: models(server.base_url)["llm"]["state"] == "unloaded", "the LLM unloaded")
        assert models(server.base_url)["image"]["state"] == "ready"  # the other model is not touched
        bad = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Hi"}], "keep_alive": "soon"})
        assert bad.status_code == 400 and "keep_alive" in bad.text
        # Ollama's way: an empty generate loads the model; with keep_alive 0 it unloads it.
        client = ollama.Client(host=server.base_url)
        name = client.list().models[0].model
        assert name is not None and client.ps().models == []
        loaded = client.generate(model=name, keep_alive="10m")
        assert loaded.done_reason == "load" and models(server.base_url)["llm"]["state"] == "ready"
        assert 300 < (client.ps().models[0].expires_at - datetime.now(UTC)).total_seconds() <= 600
        assert client.generate(model=name, keep_alive=0).done_reason == "unload"
        wait_until(lambda: models(server.base_url)["llm"]["state"] == "unloaded", "the LLM unloaded")
        assert client.ps().models == []
        # Any number of seconds is taken (one too long to wait for once killed the scheduler's thread).
        assert client.generate(model=name, keep_alive=1e20).done_reason == "load"
        assert client.ps().models[0].expires_at.year == 2318  # Ollama's date for a model kept for good
        kept = models(server.base_url)["llm"]
        assert kept["state"] == "ready" and kept["keep_alive_left"] is None
        assert client.generate(model=name, keep_alive=0).done_reason == "unload"
        wait_until(lambda: models(server.base_url)["llm"]["state"] == "unloaded", "the LLM unloaded after it")
    finally:
        server.stop()
