"""Ollama's API with the official ``ollama`` client (whose response models are strict): list, show, ps, chat with
thinking (whole and streamed), generate, and Ollama-shaped errors. Raw lines are checked too: every NDJSON line of
/api/chat has ``message.role``, every line of /api/generate has ``response``, none is blank."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import httpx
import ollama
import pytest

from tests.e2e.conftest import LiveServer
from tests.e2e.test_hardening import assert_a_dropped_stream_stops

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "What is an NPU?"}]
SHORT = {"num_predict": 24, "temperature": 0}


@pytest.fixture
def client(live_server: LiveServer) -> ollama.Client:
    return ollama.Client(host=live_server.base_url)


@pytest.fixture
def name(client: ollama.Client) -> str:
    models = client.list().models
    assert len(models) == 1 and models[0].model is not None
    return models[0].model


def test_list_and_show(client: ollama.Client, name: str, live_server: LiveServer) -> None:
    listed = client.list().models[0]
    assert name.endswith(":latest") and listed.details is not None and listed.details.family == "qwen2"
    assert listed.size and listed.digest and listed.modified_at is not None
    assert listed.details.quantization_level == "INT4" and listed.details.format == "openvino"
    shown = client.show(name.removesuffix(":latest"))  # a bare name matches too
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "qwen2"
    assert shown.capabilities == ["completion", "tools", "thinking"] and "<think>" in (shown.template or "")
    version = httpx.get(f"{live_server.base_url}/api/version").json()["version"]
    assert [int(p) for p in version.split(".")] >= [0, 12, 0]


def test_chat_with_thinking(client: ollama.Client, name: str) -> None:
    reply = client.chat(model=name, messages=QUESTION, think=True, options=SHORT)
    assert reply.done and reply.done_reason in ("stop", "length") and reply.message.role == "assistant"
    assert reply.message.thinking  # the demo model reasons first
    assert reply.eval_count and reply.prompt_eval_count and reply.total_duration and reply.eval_duration
    assert reply.total_duration >= reply.eval_duration > 0
    created = datetime.fromisoformat(str(reply.created_at).replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


def test_chat_streams_thinking_then_answer(client: ollama.Client, name: str) -> None:
    parts = list(client.chat(model=name, messages=QUESTION, stream=True, options={**SHORT, "num_predict": 200}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    thinking = "".join(p.message.thinking or "" for p in parts)
    answer = "".join(p.message.content or "" for p in parts)
    # The demo model's weights are random: whether it writes reasoning, an answer or both depends on the server's
    # batch history (near-ties at temperature 0). What must hold is the split: thinking first, no tag in either.
    seen = [("thinking" if p.message.thinking else "answer") for p in parts if p.message.thinking or p.message.content]
    assert seen == sorted(seen, key=lambda kind: kind != "thinking")  # every thinking chunk before any answer
    assert "<think>" not in answer and "</think>" not in answer and "</think>" not in thinking
    assert parts[-1].eval_count == 200 or parts[-1].done_reason == "stop"


def test_think_false_answers_without_reasoning(client: ollama.Client, name: str) -> None:
    reply = client.chat(model=name, messages=QUESTION, think=False, options=SHORT)
    assert not reply.message.thinking and reply.message.content


def test_generate(client: ollama.Client, name: str) -> None:
    reply = client.generate(model=name, prompt="Why is the sky blue?", options=SHORT, think=True)
    assert reply.done and reply.response is not None and reply.thinking
    parts = list(client.generate(model=name, prompt="Why is the sky blue?", options=SHORT, stream=True))
    assert parts[-1].done and all(p.response is not None for p in parts)


def test_raw_ndjson_lines(live_server: LiveServer, name: str) -> None:
    for path, body in (("/api/chat", {"messages": QUESTION}), ("/api/generate", {"prompt": "Hi"})):
        with httpx.stream("POST", f"{live_server.base_url}{path}", timeout=60,
                          json={"model": name, "options": SHORT, **body}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
            lines = list(r.iter_lines())
        assert lines and all(line.strip() for line in lines)
        items = [json.loads(line) for line in lines]
        assert items[-1]["done"] is True and all(i["done"] is False for i in items[:-1])
        if path == "/api/chat":
            assert all(i["message"]["role"] == "assistant" for i in items)
        else:
            assert all("response" in i for i in items)


def test_options_are_honoured(client: ollama.Client, name: str) -> None:
    a = client.chat(model=name, messages=QUESTION, options={"num_predict": 12, "seed": 7, "temperature": 1.0})
    b = client.chat(model=name, messages=QUESTION, options={"num_predict": 12, "seed": 7, "temperature": 1.0})
    assert a.eval_count == 12 and a.done_reason == "length"
    assert (a.message.thinking, a.message.content) == (b.message.thinking, b.message.content)  # the seed holds
    constrained = client.chat(model=name, messages=QUESTION, format="json", think=False, options={"num_predict": 64})
    if constrained.done_reason == "stop":
        json.loads(constrained.message.content or "")


def test_ps_shows_the_loaded_model(client: ollama.Client, name: str) -> None:
    client.generate(model=name, prompt="Hi", options={"num_predict": 1})
    running = client.ps().models
    assert [m.model for m in running] == [name]
    assert running[0].expires_at is not None and running[0].expires_at.year >= 2300  # kept for good here
    assert running[0].size and running[0].context_length


def test_ollama_shaped_errors(client: ollama.Client, name: str, live_server: LiveServer) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="llama3.2", messages=QUESTION)
    assert unknown.value.status_code == 404 and "llama3.2" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as tools:  # tools and a JSON format together are not served
        client.chat(model=name, messages=QUESTION, tools=[{"type": "function", "function": {"name": "f"}}],
                    format="json")
    assert tools.value.status_code == 400 and "tools and format" in tools.value.error
    with pytest.raises(ollama.ResponseError) as pulled:
        client.pull("llama3.2")
    assert pulled.value.status_code == 404 and "aipc-chat download" in pulled.value.error
    assert client.pull(name).status == "success"
    with pytest.raises(ollama.ResponseError) as embed:
        client.embed(model=name, input="hello")
    assert embed.value.status_code == 400 and "embeddings" in embed.value.error
    none = httpx.post(f"{live_server.base_url}/v1/embeddings", json={"model": "all-minilm", "input": "hi"})
    assert none.status_code == 404 and "AIPC_EMBEDDING_PATH" in none.json()["error"]["message"]  # none served
    for ask in (lambda: client.chat(model=name, messages=QUESTION, logprobs=True),
                lambda: client.generate(model=name, prompt="Hi", logprobs=True, top_logprobs=2)):
        with pytest.raises(ollama.ResponseError, match="logprobs") as logprobs:
            ask()  # refused as /v1/chat/completions refuses them, not silently dropped
        assert logprobs.value.status_code == 400
    bad = httpx.post(f"{live_server.base_url}/api/chat", json={"model": name, "messages": "x"})
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    gone = httpx.request("DELETE", f"{live_server.base_url}/api/delete", json={"model": name})
    assert gone.status_code == 404 and isinstance(gone.json()["error"], str)


def test_a_client_that_leaves_stops_its_stream(live_server: LiveServer, name: str) -> None:
    assert_a_dropped_stream_stops(live_server.base_url, "/api/chat", {
        "model": name, "messages": [{"role": "user", "content": "Go on and on."}],
        "options": {"num_predict": 4000, "ignore_eos": True}})


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_is_json_whatever_its_content_type_says(live_server: LiveServer, name: str,
                                                       content_type: str | None) -> None:
    """As Ollama reads it: its own curl examples send no Content-Type (curl then says form-encoded)."""
    body = json.dumps({"model": name, "messages": QUESTION, "stream": False, "options": SHORT}).encode()
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(f"{live_server.base_url}/api/chat", content=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["message"]["role"] == "assistant"
    curl = subprocess.run(["curl", "-s", f"{live_server.base_url}/api/generate", "-d",
                           json.dumps({"model": name, "prompt": "Hi", "stream": False, "options": SHORT})],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(curl.stdout)["done"] is True  # Ollama's docs' own command, as they write it


def test_unknown_routes_say_so_in_each_apis_shape(live_server: LiveServer) -> None:
    for path, family in (("/v1/nope", "openai"), ("/sdapi/v1/nope", "openai"), ("/api/nope", "ollama")):
        r = httpx.post(f"{live_server.base_url}{path}", json={})
        assert r.status_code == 404, (path, r.text)
        error = r.json()["error"]
        message = error if family == "ollama" else error["message"]
        assert path in message and "not supported" in message, (path, message)
        if family == "openai":
            assert error["code"] == "unsupported_endpoint" and error["type"] == "not_found_error"


@pytest.mark.parametrize("seed", range(8))
def test_reasoning_is_the_same_streamed_or_not_and_no_close_tag_reaches_the_answer(client: ollama.Client, name: str,
                                                                                   seed: int) -> None:
    """Seeded multi-turn chats on the demo model (which may write </think> twice): the same seed gives the same
    reasoning and answer whole and streamed, and the answer never holds a think tag."""
    history = [{"role": "user", "content": "What is an NPU?"},
               {"role": "assistant", "content": "A neural processing unit."},
               {"role": "user", "content": "And a GPU, in one line?"}]
    options = {"num_predict": 48, "temperature": 0.8, "seed": seed}
    whole = client.chat(model=name, messages=history, options=options, think=True)
    parts = list(client.chat(model=name, messages=history, options=options, think=True, stream=True))
    streamed_thinking = "".join(p.message.thinking or "" for p in parts)
    streamed_answer = "".join(p.message.content or "" for p in parts)
    assert (whole.message.thinking or "") == streamed_thinking
    assert (whole.message.content or "") == streamed_answer.strip()
    for text in (whole.message.content or "", streamed_answer):
        assert "</think>" not in text and "<think>" not in text.lstrip()[:7]
    unthinking = client.chat(model=name, messages=history, options=options, think=False)
    budgeted = httpx.post(f"{client._client.base_url}/v1/chat/completions", timeout=60, json={
        "model": name, "messages": history, "max_tokens": 48, "seed": seed, "reasoning_budget": 4}).json()
    for text in (unthinking.message.content or "", budgeted["choices"][0]["message"]["content"] or ""):
        assert "</think>" not in text
