"""The serving layer: every API's request -> GenParams (each default written out), the seed rule, model names, and
the one drain of an engine stream (with a scripted fake engine)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from aipc_chat.api.schemas.chat import ChatRequest
from aipc_chat.api.schemas.common import keep_alive_seconds
from aipc_chat.api.schemas.ollama import OllamaChatRequest, OllamaGenerateRequest
from aipc_chat.api.schemas.openai import ChatCompletionRequest, CompletionRequest
from aipc_chat.engines.contract import Delta, Done, GenParams, LLMStream, Timing
from aipc_chat.errors import NotReady
from aipc_chat.orchestrator import IMAGE_TAG, turn_params
from aipc_chat.serving import (
    IMAGE_SEED_MAX,
    LLM_SEED_MAX,
    Asked,
    Chunk,
    Reply,
    gen_params,
    names_match,
    open_stream,
    resolve_seed,
    tagged,
)

USER = [{"role": "user", "content": "Hi"}]

# --- each API's defaults: a body with only its required fields -> every field of GenParams ---------------------

OPENAI_CHAT = GenParams(
    max_tokens=None, temperature=0.6, top_p=0.95, top_k=None, seed=None, stop=(), presence_penalty=0.0,
    frequency_penalty=0.0, repetition_penalty=1.0, ignore_eos=False, reasoning_budget=None, json_schema=None,
    regex=None, grammar=None, tag=None, constraint_param="response_format", think=True, split_reasoning=True,
    keep_alive=None)
OPENAI_COMPLETIONS = GenParams(
    max_tokens=16, temperature=1.0, top_p=1.0, top_k=None, seed=None, stop=(), presence_penalty=0.0,
    frequency_penalty=0.0, repetition_penalty=1.0, ignore_eos=False, reasoning_budget=None, json_schema=None,
    regex=None, grammar=None, tag=None, constraint_param="response_format", think=True, split_reasoning=False,
    keep_alive=None)
OLLAMA = GenParams(
    max_tokens=None, temperature=0.8, top_p=0.9, top_k=40, seed=None, stop=(), presence_penalty=0.0,
    frequency_penalty=0.0, repetition_penalty=1.0, ignore_eos=False, reasoning_budget=None, json_schema=None,
    regex=None, grammar=None, tag=None, constraint_param="format", think=True, split_reasoning=True, keep_alive=None)
CHAT = GenParams(
    max_tokens=512, temperature=0.6, top_p=0.95, top_k=None, seed=None, stop=(), presence_penalty=0.0,
    frequency_penalty=0.0, repetition_penalty=1.0, ignore_eos=False, reasoning_budget=None, json_schema=None,
    regex=None, grammar=None, tag=IMAGE_TAG, constraint_param="image", think=True, split_reasoning=True,
    keep_alive=None)


def openai_chat(**body: Any) -> GenParams:
    return ChatCompletionRequest.model_validate({"messages": USER, **body}).to_params()


def openai_completions(**body: Any) -> GenParams:
    return CompletionRequest.model_validate({"prompt": "Once", **body}).to_params()


def ollama_chat(**body: Any) -> GenParams:
    return OllamaChatRequest.model_validate({"model": "m", "messages": USER, **body}).to_params(4096)


def ollama_generate(**body: Any) -> GenParams:
    return OllamaGenerateRequest.model_validate({"model": "m", "prompt": "Hi", **body}).to_params(4096)


def chat(**body: Any) -> GenParams:
    return turn_params(ChatRequest.model_validate({"user_id": "u", "message": "Hi", **body}).to_turn(), 512)


@pytest.mark.parametrize(("mapping", "expected"), [
    (openai_chat, OPENAI_CHAT), (openai_completions, OPENAI_COMPLETIONS), (ollama_chat, OLLAMA),
    (ollama_generate, OLLAMA), (chat, CHAT),
])
def test_every_default(mapping: Any, expected: GenParams) -> None:
    assert mapping() == expected


@pytest.mark.parametrize(("body", "changed"), [
    ({"temperature": 0, "top_p": 0.5, "top_k": 7, "max_tokens": 9}, {"temperature": 0, "top_p": 0.5, "top_k": 7,
                                                                       "max_tokens": 9}),
    ({"max_tokens": 9, "max_completion_tokens": 5}, {"max_tokens": 5}),  # the newer name wins
    ({"stop": "END", "seed": 3}, {"stop": ("END",), "seed": 3}),
    ({"presence_penalty": 1, "frequency_penalty": -1, "repetition_penalty": 1.2},
     {"presence_penalty": 1, "frequency_penalty": -1, "repetition_penalty": 1.2}),
    ({"top_k": 0}, {}),  # 0: off
    ({"response_format": {"type": "json_object"}}, {"json_schema": '{"type": "object"}'}),
    ({"keep_alive": "5m", "ignore_eos": True, "reasoning_budget": 0},
     {"keep_alive": 300.0, "ignore_eos": True, "reasoning_budget": 0}),
])
def test_openai_chat_overrides(body: dict[str, Any], changed: dict[str, Any]) -> None:
    assert openai_chat(**body) == replace(OPENAI_CHAT, **changed)


def test_openai_completions_overrides() -> None:
    assert openai_completions(max_tokens=100, temperature=0.2, stop=["\n"]) == replace(
        OPENAI_COMPLETIONS, max_tokens=100, temperature=0.2, stop=("\n",))
    assert openai_completions(max_tokens=None) == OPENAI_COMPLETIONS  # null is OpenAI's default, 16


@pytest.mark.parametrize(("options", "changed"), [
    ({"num_predict": 12, "temperature": 1.0, "top_p": 0.5, "top_k": 5}, {"max_tokens": 12, "temperature": 1.0,
                                                                         "top_p": 0.5, "top_k": 5}),
    ({"num_predict": -1}, {}), ({"num_predict": -2}, {}), ({"num_predict": 0}, {}),  # no limit
    ({"top_k": 0, "top_p": 0}, {"top_k": None, "top_p": 1.0}),  # 0: off
    ({"repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25},
     {"repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25}),
    ({"seed": 7, "stop": "###"}, {"seed": 7, "stop": ("###",)}),
    ({"seed": -1}, {}),
])
def test_ollama_overrides(options: dict[str, Any], changed: dict[str, Any]) -> None:
    assert ollama_chat(options=options) == replace(OLLAMA, **changed)
    assert ollama_generate(options=options) == replace(OLLAMA, **changed)


def test_ollama_request_fields() -> None:
    assert ollama_chat(think=False, format="json", keep_alive=-1) == replace(
        OLLAMA, think=False, json_schema='{"type": "object"}', keep_alive=math.inf)
    assert ollama_generate(keep_alive=0) == replace(OLLAMA, keep_alive=0.0)


def test_chat_overrides() -> None:
    assert chat(image="never") == replace(CHAT, tag=None)
    assert chat(max_tokens=64, temperature=0.1, seed=5) == replace(CHAT, max_tokens=64, temperature=0.1, seed=5)
    assert chat(seed=-1) == CHAT


# --- the seed rule -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "bound", "expected"), [
    (None, LLM_SEED_MAX, None), (-1, LLM_SEED_MAX, None), (0, LLM_SEED_MAX, 0),
    (LLM_SEED_MAX, LLM_SEED_MAX, LLM_SEED_MAX), (IMAGE_SEED_MAX, IMAGE_SEED_MAX, IMAGE_SEED_MAX),
])
def test_seed(value: int | None, bound: int, expected: int | None) -> None:
    assert resolve_seed(value, bound) == expected


@pytest.mark.parametrize(("value", "bound"), [(-2, LLM_SEED_MAX), (LLM_SEED_MAX + 1, LLM_SEED_MAX),
                                              (IMAGE_SEED_MAX + 1, IMAGE_SEED_MAX)])
def test_seed_out_of_bounds(value: int, bound: int) -> None:
    with pytest.raises(ValueError, match="seed"):
        resolve_seed(value, bound)


@pytest.mark.parametrize("make", [
    lambda seed: openai_chat(seed=seed), lambda seed: openai_completions(seed=seed),
    lambda seed: ollama_chat(options={"seed": seed}), lambda seed: chat(seed=seed),
])
@pytest.mark.parametrize("seed", [-2, LLM_SEED_MAX + 1])
def test_every_api_bounds_the_seed(make: Any, seed: int) -> None:
    with pytest.raises(ValidationError, match="seed"):
        make(seed)


def test_image_seeds_share_the_rule() -> None:
    turn = ChatRequest.model_validate({"user_id": "u", "message": "Hi", "image_options": {"seed": -1}}).to_turn()
    assert turn.image_options.seed is None
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"user_id": "u", "message": "Hi", "image_options": {"seed": IMAGE_SEED_MAX + 1}})


def test_the_table_is_the_only_default() -> None:
    assert gen_params("ollama", Asked()) == OLLAMA
    assert gen_params("chat", Asked(max_tokens=512, tag=IMAGE_TAG)) == CHAT


# --- model names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "ok"), [
    ("qwen3-0.6b", True), ("qwen3-0.6b:latest", True), ("Qwen3-0.6B", True), (" QWEN3-0.6B:latest ", True),
    ("OpenVINO/Qwen3-0.6B-int4-ov", True), ("openvino/qwen3-0.6b-int4-ov:latest", True),  # the repository: an alias
    ("qwen3-0.6b:q4", False), ("llama3.2", False), ("", False),
])
def test_model_names(requested: str, ok: bool) -> None:
    assert names_match(requested, ["qwen3-0.6b", None, "OpenVINO/Qwen3-0.6B-int4-ov"]) is ok


def test_tagged() -> None:
    assert (tagged("m"), tagged("m:latest"), tagged("m:q4"), tagged("hf.co/u/m")) == (
        "m:latest", "m:latest", "m:q4", "hf.co/u/m:latest")


# --- the stream aggregator ---------------------------------------------------------------------------------------


class ScriptedLLM:
    """Answers every request with the scripted items (a Delta, a Done or an exception), in small batches."""

    def __init__(self, *items: Delta | Done | Exception, refuse: Exception | None = None) -> None:
        self.items, self.refuse = items, refuse
        self.streams: list[LLMStream] = []
        self.asked: list[tuple[object, GenParams]] = []

    def _stream(self, request: object, params: GenParams) -> LLMStream:
        if self.refuse is not None:
            raise self.refuse
        self.asked.append((request, params))
        stream = LLMStream("chatcmpl-1", 3)
        for item in self.items:
            stream.put(item)
        stream.close()
        self.streams.append(stream)
        return stream

    def submit(self, messages: list[dict[str, str]], params: GenParams, arrival: object = None) -> LLMStream:
        return self._stream(messages, params)

    def submit_prompt(self, prompt: str, params: GenParams, arrival: object = None) -> LLMStream:
        return self._stream(prompt, params)


REPLY = (Delta("Let me ", "", 2), Delta("think.", "", 1), Delta("", "Hello", 1), Delta("", ", world", 2),
         Done("length", 3, 6, Timing()))


def drain(engine: ScriptedLLM, request: list[dict[str, str]] | str = USER) -> tuple[list[Chunk], Reply]:
    async def main() -> tuple[list[Chunk], Reply]:
        generation = await open_stream(engine, request, GenParams(), timeout=5)
        chunks = [chunk async for chunk in generation.chunks()]
        return chunks, generation.reply

    return asyncio.run(main())


def test_aggregator_text_reasoning_finish_and_usage() -> None:
    chunks, reply = drain(ScriptedLLM(*REPLY))
    assert "".join(r for r, _ in chunks) == "Let me think." and "".join(c for _, c in chunks) == "Hello, world"
    assert (reply.reasoning, reply.content, reply.finish_reason) == ("Let me think.", "Hello, world", "length")
    assert reply.usage == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert reply.request_id == "chatcmpl-1" and isinstance(reply.timing, Timing)


def test_collect_and_prompts() -> None:
    engine = ScriptedLLM(*REPLY)

    async def main() -> Any:
        return await (await open_stream(engine, "raw prompt", GenParams(), timeout=5)).collect()

    reply = asyncio.run(main())
    assert reply.content == "Hello, world" and engine.asked[0][0] == "raw prompt"  # submitted as it is


def test_a_refusal_is_raised_by_open_stream() -> None:
    engine = ScriptedLLM(refuse=NotReady("loading", retry_after=5))

    async def main() -> None:
        await open_stream(engine, USER, GenParams(), timeout=5)

    with pytest.raises(NotReady):
        asyncio.run(main())


def test_an_error_mid_stream_ends_it_and_the_stream_is_cancelled() -> None:
    engine = ScriptedLLM(Delta("", "Hel", 1), RuntimeError("step failed"))
    with pytest.raises(RuntimeError, match="step failed"):
        drain(engine)
    assert engine.streams[0].cancelled


def test_stopping_early_cancels_the_stream() -> None:
    engine = ScriptedLLM(*REPLY)

    async def main() -> None:
        generation = await open_stream(engine, USER, GenParams(), timeout=5)
        async for _ in generation.chunks():
            break

    asyncio.run(main())
    assert engine.streams[0].cancelled


@pytest.mark.parametrize(("given", "seconds"), [
    (90, 90.0), ("5m", 300.0), (-1, math.inf), ("-5m", math.inf), (0, 0.0),
    (1e20, math.inf), (10**400, math.inf), (-(10**400), math.inf), (100 * 365 * 86400, math.inf),
    ("1000000d", math.inf),
])
def test_keep_alive_beyond_a_century_is_forever(given: object, seconds: float) -> None:
    """Any number of seconds is taken; a century and more (even one beyond a float) is kept for good, never a
    deadline a thread or a date cannot hold."""
    assert keep_alive_seconds(given) == seconds
