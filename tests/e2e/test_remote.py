"""Remote engines: one aipc-chat serves the demo models, a second one uses it through AIPC_LLM_ENDPOINT and
AIPC_IMAGE_ENDPOINT (OpenAI and AUTOMATIC1111 APIs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import LiveServer, start_server
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(demo_models: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    upstream = start_server(demo_models.parent, tmp_path / "up", tmp_path / "up.log")
    front = start_server(demo_models.parent, tmp_path / "front", tmp_path / "front.log", env={
        "AIPC_LLM_ENDPOINT": f"{upstream.base_url}/v1", "AIPC_IMAGE_ENDPOINT": upstream.base_url,
        "AIPC_DEMO": "0", "AIPC_REQUEST_TIMEOUT": "20"})
    yield upstream, front
    front.stop()
    upstream.stop()


def active(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aipc_llm_active_requests "):
            return float(line.split()[1])
    raise AssertionError("no gauge")


def test_chat_with_an_image_through_the_remote_engines(pair: tuple[LiveServer, LiveServer]) -> None:
    upstream, front = pair
    ready = httpx.get(f"{front.base_url}/ready").json()
    assert ready["models"]["llm"]["source"] == "remote" and ready["models"]["llm"]["model"] == "aipc-demo-deepseek-r1"
    r = httpx.post(f"{front.base_url}/chat", timeout=60, json={
        "user_id": "far", "message": "Draw a fox", "image": "always", "image_options": {"steps": 2, "size": "64x64"}})
    body = r.json()
    assert r.status_code == 200 and body["assistant_response"] and body["reasoning"]
    assert body["image_generated"] and body["image_urls"][0].startswith(front.base_url)
    assert httpx.get(body["image_urls"][0]).content.startswith(b"\x89PNG")
    assert "POST /sdapi/v1/txt2img" in upstream.log() and "POST /v1/chat/completions" in upstream.log()


def test_streaming_chat_through_the_remote(pair: tuple[LiveServer, LiveServer]) -> None:
    _, front = pair
    names = []
    with httpx.stream("POST", f"{front.base_url}/chat", timeout=60, json={
            "user_id": "far2", "message": "Hello!", "image": "never", "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
    assert names[-1] == "done" and "content" in names and "reasoning" in names
    client = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model="aipc-demo-deepseek-r1", stream=True, max_tokens=5,
                                                 messages=[{"role": "user", "content": "Hi"}],
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    # A plain prompt cannot be passed on (the remote templates every request): a clear 400 on both APIs.
    with pytest.raises(openai.BadRequestError, match="plain prompt"):
        client.completions.create(model="aipc-demo-deepseek-r1", prompt="Once", max_tokens=4)
    raw = httpx.post(f"{front.base_url}/api/generate", json={"model": "aipc-demo-deepseek-r1", "prompt": "Once",
                                                             "raw": True, "stream": False})
    assert raw.status_code == 400 and "plain prompt" in raw.json()["error"]


def test_cancelled_stream_closes_the_upstream_request(pair: tuple[LiveServer, LiveServer]) -> None:
    upstream, front = pair
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert active(upstream.base_url) == 1
    wait_until(lambda: active(upstream.base_url) == 0, "the upstream's request cancelled")


def test_a_stopped_upstream_gives_503_fast_and_ready_says_so(pair: tuple[LiveServer, LiveServer]) -> None:
    upstream, front = pair
    upstream.stop()
    r = httpx.post(f"{front.base_url}/chat", timeout=60, json={"user_id": "far3", "message": "Hi", "image": "never"})
    assert r.status_code in (502, 503) and r.json()["error"]["code"].startswith("upstream")
    r = httpx.post(f"{front.base_url}/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": "Hi"}], "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert r.status_code in (502, 503) or events[-1]["error"]["code"].startswith("upstream")
    ready = httpx.get(f"{front.base_url}/ready")
    assert ready.status_code == 503 and ready.json()["models"]["llm"]["state"] == "unreachable"
    assert httpx.get(f"{front.base_url}/health").status_code == 200
    r = httpx.post(f"{front.base_url}/v1/images/generations", timeout=30,
                   json={"prompt": "x", "size": "64x64", "num_inference_steps": 1})
    assert r.status_code in (502, 503)
