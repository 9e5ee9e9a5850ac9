"""OpenAI extras with the official client: models.retrieve, reasoning_format (per request and the server's
default), stop strings that apply to the answer only, and /v1/completions for a plain prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e

LLM = "aipc-demo-deepseek-r1"
QUESTION = [{"role": "user", "content": "What is an NPU?"}]


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve(LLM).id == LLM
    assert client.models.retrieve("aipc-demo-sd15").model_extra["type"] == "image"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_reasoning_format_none_keeps_the_think_block_in_content(client: openai.OpenAI) -> None:
    split = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=120)
    inline = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=120,
                                            extra_body={"reasoning_format": "none"})
    reasoning = split.choices[0].message.model_extra["reasoning_content"]  # type: ignore[index]
    text = inline.choices[0].message.content or ""
    assert "reasoning_content" not in (inline.choices[0].message.model_extra or {})
    assert text == f"<think>\n{reasoning}\n</think>\n\n{split.choices[0].message.content}"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=LLM, messages=QUESTION, temperature=0, max_tokens=120, stream=True,
        extra_body={"reasoning_format": "none"}) if chunk.choices)
    assert streamed.replace("\n", "") == text.replace("\n", "")  # the same text, chunk boundaries aside
    legacy = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=120,
                                            extra_body={"reasoning_format": "deepseek-legacy"})
    assert legacy.choices[0].message.content == text
    assert legacy.choices[0].message.model_extra["reasoning_content"] == reasoning  # type: ignore[index]


def test_stop_strings_apply_to_the_answer_only(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=200)
    reasoning = whole.choices[0].message.model_extra["reasoning_content"]  # type: ignore[index]
    answer = whole.choices[0].message.content or ""
    word = next(w for w in reasoning.split() if len(w) > 3 and w.isalpha())  # a word the reasoning says
    stopped = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=200,
                                             stop=[word])
    message = stopped.choices[0].message
    assert message.model_extra["reasoning_content"] == reasoning  # type: ignore[index]  # not cut
    expected = answer.split(word)[0].strip() if word in answer else answer
    assert message.content == expected and stopped.choices[0].finish_reason == "stop"
    if answer.split():
        first = answer.split()[1] if len(answer.split()) > 1 else answer.split()[0]
        cut = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=200,
                                             stop=[first])
        assert cut.choices[0].message.content == answer.split(first)[0].strip()
        assert first not in (cut.choices[0].message.content or "")


def test_completions_for_a_plain_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(model=LLM, prompt="Once upon a time", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 12 and r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=LLM, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == r.choices[0].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=LLM, prompt="x", echo=True)


@pytest.fixture(scope="module")
def inline_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("inline")
    server = start_server(demo_models.parent, root / "data", root / "server.log",
                          env={"AIPC_REASONING_FORMAT": "none"})
    yield server
    server.stop()


def test_the_server_default_reasoning_format(inline_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{inline_server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    r = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=120)
    assert (r.choices[0].message.content or "").startswith("<think>\n")
    split = client.chat.completions.create(model=LLM, messages=QUESTION, temperature=0, max_tokens=120,
                                           extra_body={"reasoning_format": "deepseek"})
    assert split.choices[0].message.model_extra["reasoning_content"]  # type: ignore[index]
