"""The model scheduler on a live server: sizes that add up to the RSS two loads cost, keep_alive 0 unloading before
the response returns, and an event loop that answers /health while a long prompt is fitted and pictures are
written."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import psutil
import pytest

from aipc_chat.runtime import Runtime
from aipc_chat.settings import Settings
from tests.e2e.conftest import LiveServer, start_server
from tests.e2e.test_engine_faults import serve

pytestmark = pytest.mark.e2e


@pytest.fixture
def lazy_server(demo_models: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """A server that loads no model until asked."""
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_LOAD_ON_START": "false"})
    yield server
    server.stop()


def metric_values(base_url: str, name: str) -> dict[str, float]:
    """``name{kind="..."} value`` lines of /metrics, by kind ("" for a sample without labels)."""
    text = httpx.get(f"{base_url}/metrics").text
    found = re.findall(rf'^{name}(?:{{kind="(\w+)"}})? (\S+)$', text, flags=re.MULTILINE)
    return {kind: float(value) for kind, value in found}


def states(base_url: str) -> dict[str, str]:
    return {kind: m["state"] for kind, m in httpx.get(f"{base_url}/ready").json()["models"].items()}


def test_two_models_loaded_at_once_report_sizes_that_add_up_to_the_rss_they_cost(lazy_server: LiveServer) -> None:
    url = lazy_server.base_url
    process = psutil.Process(lazy_server.proc.pid)
    name = ollama.Client(host=url).list().models[0].model
    assert states(url) == {"llm": "unloaded", "image": "unloaded"}
    before = process.memory_info().rss
    with ThreadPoolExecutor(2) as pool:  # Ollama's load-only request and A1111's, sent together
        llm = pool.submit(httpx.post, f"{url}/api/generate", json={"model": name, "keep_alive": -1}, timeout=120)
        image = pool.submit(httpx.post, f"{url}/sdapi/v1/reload-checkpoint", timeout=120)
        assert llm.result().status_code == 200, llm.result().text
        assert image.result().status_code == 200, image.result().text
    grown = process.memory_info().rss - before
    assert states(url) == {"llm": "ready", "image": "ready"}
    sizes = metric_values(url, "aipc_model_resident_bytes")  # the tiny demo LLM may add ~0 after the image model
    assert sizes["llm"] >= 0 and sizes["image"] > 0
    assert abs(sizes["llm"] + sizes["image"] - grown) <= 0.10 * grown, (sizes, grown)
    (running,) = ollama.Client(host=url).ps().models
    assert running.size == int(sizes["llm"])
    process_bytes = metric_values(url, "aipc_process_resident_bytes")[""]
    assert abs(process_bytes - process.memory_info().rss) <= 0.10 * process_bytes
    assert metric_values(url, "aipc_model_loaded") == {"llm": 1.0, "image": 1.0}


def test_keep_alive_zero_unloads_before_the_response_returns(lazy_server: LiveServer) -> None:
    url = lazy_server.base_url
    client = ollama.Client(host=url)
    name = client.list().models[0].model
    answer = client.generate(model=name, prompt="Hi", keep_alive=0, options={"num_predict": 4})
    assert answer.done and states(url)["llm"] == "unloaded" and client.ps().models == []  # no wait, no poll
    chunks = list(client.chat(model=name, messages=[{"role": "user", "content": "Hi"}], keep_alive=0, stream=True,
                              options={"num_predict": 4}))
    assert chunks[-1].done and states(url)["llm"] == "unloaded"
    reply = openai.OpenAI(base_url=f"{url}/v1", api_key="x").chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_body={"keep_alive": 0})
    assert reply.choices[0].message is not None and states(url)["llm"] == "unloaded"
    loaded = client.generate(model=name, keep_alive="5m")  # Ollama's load-only request loads without generating
    assert loaded.done_reason == "load" and states(url)["llm"] == "ready"
    assert metric_values(url, "aipc_llm_generated_tokens_total")[""] == 12  # three answers of 4, nothing for the load
    assert client.generate(model=name, keep_alive=0).done_reason == "unload" and states(url)["llm"] == "unloaded"


def blocking(target: Any, attribute: str) -> tuple[threading.Event, threading.Event]:
    """Make ``target.attribute`` wait, once entered, until released: (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real: Callable[..., Any] = getattr(target, attribute)

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(120)
        return real(*args, **kwargs)

    setattr(target, attribute, held)
    return entered, release


def answers_while(url: str, entered: threading.Event, release: threading.Event) -> None:
    """Once the blocking work has begun, /health answers (the event loop is free), then the work may go on."""
    try:
        assert entered.wait(120), "the blocking work never started"
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # a blocked event loop would not answer
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
    finally:
        release.set()


def test_health_answers_while_a_long_prompt_is_fitted_and_pictures_are_written(demo_settings: Settings) -> None:
    runtime = Runtime(demo_settings)
    with serve(runtime, demo_settings) as url:
        assert runtime.llm is not None and runtime.image is not None
        long_turn = {"user_id": "u", "image": "never", "max_tokens": 16,
                     "message": " ".join(["tell me more about the quiet harbour at dawn"] * 175)}  # 1.7k tokens
        first = httpx.post(f"{url}/chat", json=long_turn, timeout=120)
        assert first.status_code == 200, first.text
        # The next turn's prompt (that turn, this one, the system prompt: 3.5k tokens) is fitted to the context.
        entered, release = blocking(runtime.llm, "prompt_tokens")
        with ThreadPoolExecutor(1) as pool:
            turn = pool.submit(httpx.post, f"{url}/chat", json=long_turn, timeout=120)
            answers_while(url, entered, release)
            assert turn.result().status_code == 200, turn.result().text
        entered, release = blocking(runtime.image.store, "save")  # encoding and writing the PNG
        with ThreadPoolExecutor(1) as pool:
            picture = pool.submit(httpx.post, f"{url}/v1/images/generations", timeout=120,
                                  json={"prompt": "a red cube", "size": "64x64", "num_inference_steps": 2})
            answers_while(url, entered, release)
            assert picture.result().status_code == 200, picture.result().text
        entered, release = blocking(runtime.history, "set_images")  # the picture's names into history (fsync)
        with ThreadPoolExecutor(1) as pool:
            turn = pool.submit(httpx.post, f"{url}/chat", timeout=120,
                               json={"user_id": "u", "message": "Draw a boat", "image": "always", "max_tokens": 16,
                                     "image_options": {"size": "64x64", "steps": 2}})
            answers_while(url, entered, release)
            assert turn.result().status_code == 200, turn.result().text
