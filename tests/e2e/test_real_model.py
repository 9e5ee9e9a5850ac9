"""A real instruct model through the server: SmolLM2-135M-Instruct as a GGUF file (no reasoning), then as a model
in a store laid out like Ollama's. Right answers, no reasoning fields, multi-turn memory, a drawing when asked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import LiveServer, free_port, start_server
from tests.stores import ollama_store
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
SMALL_PICTURE = {"steps": 2, "size": "256x256"}


@pytest.fixture(scope="module")
def smol_server(smollm2: Path, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """SmolLM2 as the LLM (its .gguf file), the demo image model beside it."""
    root = tmp_path_factory.mktemp("smol")
    server = start_server(demo_models.parent, root / "data", root / "server.log", env={"AIPC_LLM_PATH": str(smollm2)})
    yield server
    server.stop()


@pytest.fixture
def client(smol_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smol_server.base_url}/v1", api_key="unused", max_retries=0)


def chat(server: LiveServer, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.base_url}/chat", json={"temperature": 0, "max_tokens": 80, **body}, timeout=120)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_the_gguf_model_is_served_under_its_name(smol_server: LiveServer, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data][0] == "SmolLM2-135M-Instruct.Q4_1"
    ready = httpx.get(f"{smol_server.base_url}/ready").json()
    assert ready["models"]["llm"]["state"] == "ready"


@pytest.mark.parametrize(("question", "answer"), [("What is the capital of France?", "Paris"),
                                                  ("What is the largest planet in the solar system?", "Jupiter")])
def test_factual_answers_without_reasoning(client: openai.OpenAI, question: str, answer: str) -> None:
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", temperature=0, max_tokens=40,
                                           messages=[{"role": "user", "content": question}])
    message = reply.choices[0].message
    assert answer in (message.content or "") and reply.choices[0].finish_reason == "stop"
    assert "reasoning_content" not in (message.model_extra or {})


def test_streaming_without_reasoning(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", temperature=0, max_tokens=40, stream=True,
        messages=[{"role": "user", "content": "What is the capital of France?"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text and len(chunks) > 3
    assert not any("reasoning_content" in (c.choices[0].delta.model_extra or {}) for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_a_conversation_remembers(smol_server: LiveServer) -> None:
    first = chat(smol_server, user_id="alice", message="My name is Alice and I love hiking.", image="never")
    second = chat(smol_server, user_id="alice", message="What is my name?", image="never")
    assert "Alice" in second["assistant_response"]
    assert first["reasoning"] is None and second["reasoning"] is None
    history = httpx.get(f"{smol_server.base_url}/chat/alice/history").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 2 and history[1]["reasoning"] is None


# Several asks, each checked for its own subject: a word of the prompt must be the thing asked for (in any
# number), not only its setting ("a light reflecting off a windowsill" for the cat once passed a looser check).
DRAWINGS = [("Draw a cat sitting on a windowsill", r"cats?"), ("Paint a red fox in the snow", r"fox(es)?"),
            ("Can you sketch a lighthouse at dusk?", r"lighthouses?"), ("Draw two dogs playing", r"dogs?")]


@pytest.mark.parametrize(("message", "noun"), DRAWINGS)
def test_a_drawing_asked_for_in_auto_is_drawn(smol_server: LiveServer, message: str, noun: str) -> None:
    result = chat(smol_server, user_id="bob", conversation_id=f"drawing-{DRAWINGS.index((message, noun))}",
                  message=message, image="auto", wait_for_image=False, image_options=SMALL_PICTURE)
    assert result["image_state"] == "queued" and result["image_job_id"] and result["reasoning"] is None
    assert re.search(rf"\b{noun}\b", result["image_prompt"]["prompt"], re.IGNORECASE), result["image_prompt"]
    job = f"{smol_server.base_url}/v1/images/jobs/{result['image_job_id']}"

    def finished() -> dict[str, Any] | None:
        state = httpx.get(job).json()
        assert state["state"] in ("queued", "running", "done"), state
        return dict(state) if state["state"] == "done" else None

    state = wait_until(finished, "the picture done")
    assert httpx.get(state["images"][0]).content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plain_question_in_auto_is_not_drawn(smol_server: LiveServer) -> None:
    plain = chat(smol_server, user_id="carol", message="What is the capital of France?", image="auto")
    assert plain["image_state"] is None and "Paris" in plain["assistant_response"]


def test_the_image_endpoints_are_unchanged(smol_server: LiveServer, client: openai.OpenAI) -> None:
    r = httpx.post(f"{smol_server.base_url}/sdapi/v1/txt2img", timeout=60,
                   json={"prompt": "a red cube", "steps": 2, "width": 256, "height": 256})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    image = client.images.generate(model="aipc-demo-sd15", prompt="a red cube", size="256x256",
                                   extra_body={"num_inference_steps": 2})
    assert image.data and image.data[0].url


@pytest.fixture(scope="module")
def store(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ollama's layout around the SmolLM2 file: manifests/registry.ollama.ai/library/smollm2/135m -> a blob."""
    return ollama_store(tmp_path_factory.mktemp("ollama"), smollm2, name="library/smollm2", tag="135m")


def test_an_ollama_model_by_name(store: Path, demo_models: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OLLAMA_MODELS": str(store)}
    listed = subprocess.run([sys.executable, "-m", "aipc_chat", "models", "--json", "--models-dir",
                             str(tmp_path / "models")], env=env, capture_output=True, text=True, check=True)
    rows = [r for r in json.loads(listed.stdout) if r["source"] == "ollama"]
    assert [(r["name"], r["architecture"], r["verified"]) for r in rows] == [("smollm2:135m", "llama", True)]
    assert rows[0]["serve_with"] == "AIPC_LLM_PATH=ollama:smollm2:135m"

    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_LLM_PATH": "ollama:smollm2:135m", "OLLAMA_MODELS": str(store)})
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data][0] == "smollm2:135m"
        reply = client.chat.completions.create(model="smollm2:135m", temperature=0, max_tokens=30,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in (reply.choices[0].message.content or "")
    finally:
        server.stop()
    env.update(AIPC_LLM_PATH="ollama:nothing:1b", AIPC_MODELS_DIR=str(demo_models.parent))
    missing = subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--demo", "--port", str(free_port())],
                             capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode == 2 and "has no model 'nothing:1b' (models there: smollm2:135m)" in missing.stderr


def test_the_ollama_api_with_a_model_that_does_not_reason(smol_server: LiveServer) -> None:
    import ollama

    client = ollama.Client(host=smol_server.base_url)
    assert [m.model for m in client.list().models] == ["SmolLM2-135M-Instruct.Q4_1:latest"]
    shown = client.show("SmolLM2-135M-Instruct.Q4_1")
    assert shown.capabilities == ["completion", "tools"] and shown.details is not None
    assert shown.details.format == "gguf" and shown.details.quantization_level == "Q4_1"
    assert shown.details.parameter_size == "135M"
    reply = client.chat(model="SmolLM2-135M-Instruct.Q4_1", options={"temperature": 0, "num_predict": 40},
                        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in (reply.message.content or "") and not reply.message.thinking
    assert reply.done_reason == "stop"
    answer = client.generate(model="SmolLM2-135M-Instruct.Q4_1", prompt="What is the capital of France?",
                             options={"temperature": 0, "num_predict": 40})
    assert "Paris" in answer.response and not answer.thinking
    for ask in (lambda: client.chat(model="SmolLM2-135M-Instruct.Q4_1", think=True, messages=[
                    {"role": "user", "content": "Hi"}]),
                lambda: client.generate(model="SmolLM2-135M-Instruct.Q4_1", prompt="Hi", think="high")):
        with pytest.raises(ollama.ResponseError, match="does not support thinking") as refused:
            ask()  # as Ollama answers for a model without the thinking capability
        assert refused.value.status_code == 400


def test_json_mode_always_ends_with_a_json_object(smol_server: LiveServer) -> None:
    """SmolLM2 (a real model that does not reason), 20 seeds, OpenAI's and Ollama's JSON mode."""
    from tests.e2e.json_mode import assert_all_json_objects, json_mode_replies

    assert_all_json_objects(json_mode_replies(smol_server.base_url, "SmolLM2-135M-Instruct.Q4_1", range(20), 120))


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}
ASKS_FOR_A_CALL = "Weather in Paris? Answer with a <tool_call> block."


def test_required_and_named_tool_calls_carry_the_right_arguments(client: openai.OpenAI) -> None:
    """SmolLM2 takes its arguments from the question when it must call."""
    model = "SmolLM2-135M-Instruct.Q4_1"
    weather = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}], temperature=0,
        tools=[WEATHER_TOOL, ADD_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = (weather.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert weather.choices[0].finish_reason == "tool_calls"
    added = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2 plus 3?"}], temperature=0, tools=[ADD_TOOL],
        tool_choice="required")
    calls = added.choices[0].message.tool_calls or []
    assert len(calls) == 1, "a repeated call ends the reply"
    arguments = json.loads(calls[0].function.arguments)
    assert calls[0].function.name == "add" and arguments["a"] + arguments["b"] == 5


def test_auto_tool_calls_are_parsed_and_never_leaked(client: openai.OpenAI) -> None:
    """With auto the model decides: whatever it writes, calls come back parsed (and valid) and no markup reaches
    the text, streamed or not. (Streamed and whole replies are not compared: openvino-genai's sampling under
    triggered structural tags does not repeat for a seed.)"""
    called = 0
    for seed in range(12):
        ask: dict[str, Any] = {"model": "SmolLM2-135M-Instruct.Q4_1", "tools": [WEATHER_TOOL], "seed": seed,
                               "max_tokens": 100, "messages": [{"role": "user", "content": ASKS_FOR_A_CALL}]}
        whole = client.chat.completions.create(**ask).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls or []]
        assert "tool_call>" not in (whole.message.content or "")
        assert whole.finish_reason in (("tool_calls", "length") if calls else ("stop", "length"))
        text, streamed, finish = "", {}, None
        for chunk in client.chat.completions.create(**ask, stream=True):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
                for part in choice.delta.tool_calls or []:
                    assert part.id and part.function is not None and part.function.arguments is not None
                    streamed[part.index] = (part.function.name, json.loads(part.function.arguments))
        assert "tool_call>" not in text and list(streamed) == list(range(len(streamed)))
        for name, arguments in [*calls, *streamed.values()]:
            assert name == "get_weather" and isinstance(arguments.get("city"), str)
        assert finish in (("tool_calls", "length") if streamed else ("stop", "length"))
        called += bool(calls) + bool(streamed)
    assert called, "asked for one, the model called its tool at least once in 24 replies"


def test_the_ollama_client_calls_tools_and_takes_their_results(smol_server: LiveServer) -> None:
    import ollama

    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
          city: The city
        """
        return f"{city}: 18 C, sunny"

    client = ollama.Client(host=smol_server.base_url)
    model = "SmolLM2-135M-Instruct.Q4_1"
    calls = []
    for seed in range(12):
        messages = [{"role": "user", "content": ASKS_FOR_A_CALL}]
        reply = client.chat(model=model, messages=messages, tools=[get_weather],
                            options={"seed": seed, "num_predict": 100})
        made = [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls or []]
        assert "<tool_call" not in (reply.message.content or "")
        streamed = [(c.function.name, dict(c.function.arguments))
                    for part in client.chat(model=model, messages=messages, tools=[get_weather], stream=True,
                                            options={"seed": seed, "num_predict": 100})
                    for c in part.message.tool_calls or []]
        assert all(name == "get_weather" and isinstance(args["city"], str) for name, args in made + streamed)
        calls += [(reply.message, made)] if made else []
    assert calls, "asked for one, the model called its tool for at least one of 12 seeds"
    message, made = calls[0]
    assert made[0][0] == "get_weather" and isinstance(made[0][1]["city"], str)
    result = get_weather(**made[0][1])
    answer = client.chat(model=model, tools=[get_weather], options={"seed": 0, "num_predict": 40}, messages=[
        {"role": "user", "content": ASKS_FOR_A_CALL}, message,
        {"role": "tool", "content": result, "tool_name": "get_weather"}])
    assert answer.done and answer.message.role == "assistant"
    assert answer.prompt_eval_count is not None and answer.prompt_eval_count > len(result) // 4
