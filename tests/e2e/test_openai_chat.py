"""The official openai client against a live demo server: the chat API as desktop apps use it."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

LLM = "aipc-demo-deepseek-r1"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_list_models_llm_first_then_image(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [LLM, "aipc-demo-sd15"]
    assert [m.model_extra["type"] for m in models] == ["llm", "image"]  # type: ignore[index]


def test_chat_splits_reasoning_from_content(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=LLM, messages=ask("Hello, who are you?"), temperature=0)
    message = r.choices[0].message
    reasoning = message.model_extra.get("reasoning_content")  # type: ignore[union-attr]
    assert reasoning and message.content
    assert "<think>" not in message.content and "</think>" not in message.content
    assert "</think>" not in reasoning
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_matches_non_stream_and_reports_usage(client: openai.OpenAI) -> None:
    kwargs = {"model": LLM, "messages": ask("What is OpenVINO?"), "seed": 7, "temperature": 0.8}
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert content.strip() == whole.choices[0].message.content
    assert reasoning.strip() == whole.choices[0].message.model_extra["reasoning_content"]  # type: ignore[index]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_max_tokens_gives_length_with_exactly_that_many(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=LLM, messages=ask("Tell me a long story."), max_tokens=7)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 7
    r = client.chat.completions.create(model=LLM, messages=ask("Tell me a long story."),
                                       max_completion_tokens=5, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(r)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        r = client.chat.completions.create(model=LLM, messages=ask("Name a colour."), seed=seed, temperature=1.5,
                                           top_p=1.0, max_tokens=40, extra_body={"ignore_eos": True})
        return str(r.choices[0].message.model_extra) + str(r.choices[0].message.content)

    assert run(123) == run(123)
    assert len({run(s) for s in (1, 2, 3)}) > 1


def test_four_concurrent_streams_complete(base_url: str) -> None:
    async def main() -> list[tuple[str, int]]:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)

        async def one(i: int) -> tuple[str, int]:
            stream = await client.chat.completions.create(
                model=LLM, messages=ask(f"Question number {i}: what is {i} plus {i}?"), stream=True,
                max_tokens=60, extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
            finish, tokens = "", 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return finish, tokens

        try:
            return await asyncio.gather(*(one(i) for i in range(4)))
        finally:
            await client.close()

    assert asyncio.run(main()) == [("length", 60)] * 4


def active_requests(base_url: str) -> int:
    return int(httpx.get(f"{base_url}/ready").json()["models"]["llm"]["active_requests"])


def generated_tokens(base_url: str) -> float:
    (line,) = [line for line in httpx.get(f"{base_url}/metrics").text.splitlines()
               if line.startswith("aipc_llm_generated_tokens_total ")]
    return float(line.split()[1])


def test_dropped_stream_frees_its_slot(client: openai.OpenAI, base_url: str) -> None:
    generated = generated_tokens(base_url)
    stream = client.chat.completions.create(model=LLM, messages=ask("Write forever."), stream=True,
                                            max_tokens=4000, extra_body={"ignore_eos": True})
    for n, _ in enumerate(stream):
        if n >= 3:
            break
    assert active_requests(base_url) == 1
    stream.close()
    wait_until(lambda: active_requests(base_url) == 0, "the slot freed")
    assert generated_tokens(base_url) == generated  # cancelled, not run to its 4000 tokens (those would count)
    r = client.chat.completions.create(model=LLM, messages=ask("Hi"), max_tokens=5)
    assert r.choices[0].finish_reason == "length"


def test_json_schema_response_format_constrains_the_reply(client: openai.OpenAI) -> None:
    import json

    # A closed schema: the tiny demo model would pad an open object with whitespace up to max_tokens (the grammar
    # allows it), so the test asks for a value the grammar bounds.
    schema = {"enum": ["red", "blue"]}
    for question in ("Pick a colour as JSON.", "What is OpenVINO?"):
        r = client.chat.completions.create(
            model=LLM, messages=ask(question), max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}})
        assert json.loads(r.choices[0].message.content or "") in ("red", "blue")
        assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"model": "gpt-4o"}, openai.NotFoundError, "model_not_found"),
        ({"temperature": 5}, openai.BadRequestError, "invalid_value"),
        ({"n": 2}, openai.BadRequestError, "unsupported_parameter"),
        ({"logprobs": True}, openai.BadRequestError, "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, openai.BadRequestError, "invalid_value"),
        ({"max_tokens": 10**6}, openai.BadRequestError, "invalid_value"),
        ({"extra_body": {"repetition_penalty": 1e-100}}, openai.BadRequestError, "invalid_value"),  # 0 in float32
        ({"messages": ask("word " * 40000)}, openai.BadRequestError, "context_length_exceeded"),
        ({"messages": []}, openai.BadRequestError, "invalid_value"),
    ],
)
def test_bad_requests_get_4xx_in_openai_shape(client: openai.OpenAI, kwargs: dict[str, object],
                                             error: type[openai.APIStatusError], code: str) -> None:
    args: dict[str, object] = {"model": LLM, "messages": ask("Hi"), **kwargs}
    with pytest.raises(error) as info:
        client.chat.completions.create(**args)  # type: ignore[call-overload]
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == code and body["message"]


def test_malformed_json_body_is_400(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("max_tokens", [40, 200])
def test_json_mode_always_ends_with_a_json_object(base_url: str, max_tokens: int) -> None:
    """The demo model, 20 seeds, hot sampling, a small and a larger token budget, OpenAI's and Ollama's JSON mode."""
    from tests.e2e.json_mode import assert_all_json_objects, json_mode_replies

    model = httpx.get(f"{base_url}/v1/models").json()["data"][0]["id"]
    assert_all_json_objects(json_mode_replies(base_url, model, range(20), max_tokens))
