"""Tool calling through the official ``openai`` client on the demo model (DeepSeek-R1's format: it reasons, then
calls). ``required`` and a named function must give a call whose arguments match the tool's schema for every seed
(the grammar guarantees it even for random weights); streamed calls must equal the whole ones; a two-step round trip
must go through; bad tool requests are 400s and leave the server serving. SmolLM2's tool calls (real language, the
``ollama`` client, ``auto``) are in test_real_model.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest

from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.e2e

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "description": "The city"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 0}}, "required": ["city", "unit"]}
ORDER = {"type": "object", "properties": {
    "items": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "qty": {"type": "integer"}}, "required": ["name", "qty"]}, "minItems": 1},
    "express": {"type": "boolean"}, "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    "required": ["items"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "place_order", "description": "Order things",
                                           "parameters": ORDER}}]
SCHEMAS = {"get_weather": jsonschema_rs.validator_for(WEATHER), "place_order": jsonschema_rs.validator_for(ORDER)}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def check_call(name: str, arguments: str) -> dict[str, Any]:
    """The call names a tool and its arguments are a JSON object valid for that tool's schema."""
    assert name in SCHEMAS
    value = json.loads(arguments)
    assert SCHEMAS[name].is_valid(value), (name, value)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("choice", ["required", "named"])
def test_required_and_named_calls_match_the_schema_for_every_seed(client: openai.OpenAI, model: str,
                                                                 choice: str) -> None:
    tool_choice: Any = "required" if choice == "required" else {"type": "function",
                                                                "function": {"name": "place_order"}}
    for seed in range(20):
        r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                           parallel_tool_calls=False, seed=seed, max_tokens=300)
        choice_ = r.choices[0]
        calls = choice_.message.tool_calls or []
        assert choice_.finish_reason == "tool_calls" and len(calls) == 1, (seed, choice_)
        call = calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
        check_call(call.function.name, call.function.arguments)
        if choice == "named":
            assert call.function.name == "place_order"
        assert not choice_.message.content  # calls only
        assert getattr(choice_.message, "reasoning_content", None), "DeepSeek-R1's format reasons before calling"


def test_streamed_calls_equal_the_whole_ones(client: openai.OpenAI, model: str) -> None:
    for seed in range(4):
        whole = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                               parallel_tool_calls=False, seed=seed, max_tokens=300)
        calls: dict[int, dict[str, str]] = {}
        finish, text = None, ""
        for chunk in client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                                    parallel_tool_calls=False, seed=seed, max_tokens=300,
                                                    stream=True):
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for part in delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += part.id or ""
                assert part.function is not None
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        expected = whole.choices[0].message.tool_calls or []
        assert finish == "tool_calls" and "<tool_call" not in text
        assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
            (c.function.name, json.loads(c.function.arguments)) for c in expected]
        assert all(c["id"].startswith("call_") for c in calls.values())


def test_parallel_calls_are_each_valid_and_never_repeated(client: openai.OpenAI, model: str) -> None:
    for seed in range(6):
        r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required", seed=seed,
                                           max_tokens=400)
        calls = r.choices[0].message.tool_calls or []
        assert calls, seed
        seen = [(c.function.name, json.dumps(check_call(c.function.name, c.function.arguments), sort_keys=True))
                for c in calls]
        assert len(seen) == len(set(seen)), "a repeated call ends the reply"


def test_a_two_step_round_trip(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "get_weather"}}, seed=3, max_tokens=300)
    message = first.choices[0].message
    call = (message.tool_calls or [])[0]
    result = json.dumps({"temperature": 18, "sky": "sunny", "city": check_call(call.function.name,
                                                                                 call.function.arguments)["city"]})
    history: list[Any] = [*ASK, message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": result}]
    second = client.chat.completions.create(model=model, messages=history, tools=TOOLS, seed=3, max_tokens=60)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert "<tool_call" not in (second.choices[0].message.content or "")
    # the call and its result went into the prompt: the second prompt holds at least the result's text on top
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + len(result) // 4
    third = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none", seed=3,
                                           max_tokens=30)
    assert not third.choices[0].message.tool_calls and third.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not one of the tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", ""),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "[unclosed"}}}}}], "tool_choice": "required"}, "tools", "compile"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "cannot be combined"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "get_weather", "arguments": "{not json"}}]}, {"role": "tool", "tool_call_id": "c", "content": "x"}]},
     "messages.1.tool_calls.0.function.arguments", "JSON object"),
])
def test_bad_tool_requests_are_clear_400s_and_the_server_goes_on(live_server: LiveServer, body: dict[str, Any],
                                                                param: str, words: str) -> None:
    r = httpx.post(f"{live_server.base_url}/v1/chat/completions",
                   json={"messages": ASK, "max_tokens": 8, **body}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert param in (error["param"] or "") and words in error["message"]
    ok = httpx.post(f"{live_server.base_url}/v1/chat/completions",
                    json={"messages": ASK, "max_tokens": 300, "tools": TOOLS, "tool_choice": "required"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["tool_calls"]
