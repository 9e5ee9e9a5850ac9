"""OpenAI-compatible ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` and
``GET /v1/models/{id}``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from aipc_chat.api.deps import ArrivalDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.openai import ChatCompletionRequest, CompletionRequest
from aipc_chat.api.sse import sse_response
from aipc_chat.engines.contract import Delta, Done, LLMEngineClient, LLMStream, batches
from aipc_chat.errors import ModelNotFound
from aipc_chat.reasoning import THINK_CLOSE, THINK_OPEN
from aipc_chat.runtime import Runtime

router = APIRouter(tags=["openai"])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """One model by id (``client.models.retrieve``); 404 ``model_not_found`` for any other."""
    for model in _models(runtime):
        if model["id"] == model_id:
            return model
    raise ModelNotFound(f"The model '{model_id}' does not exist here.", param="model")


@router.get("/v1/models")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """The LLM first, then the image model (marked ``"type": "image"``)."""
    return {"object": "list", "data": _models(runtime)}


def _models(runtime: Runtime) -> list[dict[str, Any]]:
    created = int(time.time())
    data = []
    for kind, status in runtime.status.items():
        if status.state == "disabled":  # not served: no client should offer it
            continue
        engine = runtime.llm if kind == "llm" else runtime.image
        name = engine.model_name if engine is not None and engine.model_name else status.choice.name
        local = engine is not None and status.device != "remote"  # a remote engine's health is a network call
        data.append({"id": name, "object": "model", "created": created, "owned_by": "aipc-chat",
                     "type": "llm" if kind == "llm" else "image", "device": status.device,
                     "state": engine.health().state if local and engine is not None else status.state})
    return data


def _check_model(requested: str | None, engine: LLMEngineClient) -> None:
    if requested is not None and requested != engine.model_name:
        raise ModelNotFound(f"The model '{requested}' does not exist here; this server serves "
                            f"'{engine.model_name}'.", param="model")


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(arrival: ArrivalDep, body: ChatCompletionRequest, request: Request, runtime: RuntimeDep,
                           settings: SettingsDep) -> Any:
    """Chat completion, whole or streamed as SSE; reasoning goes in ``reasoning_content``."""
    engine = runtime.require_llm()
    _check_model(body.model, engine)
    body.check_supported()
    params = body.to_params()
    loop = asyncio.get_running_loop()
    stream = await asyncio.to_thread(engine.submit, body.chat_messages(), params, loop, arrival)
    fmt = body.reasoning_format or settings.reasoning_format
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_chunks(stream, engine.model_name, include_usage, settings.request_timeout, fmt),
                            on_close=stream.cancel, on_shutdown=runtime.interrupt_all, done="[DONE]")
    return await unless_disconnected(request, _complete(stream, engine.model_name, settings.request_timeout, fmt))


class InlineThink:
    """``reasoning_format: none``: the reasoning goes back into the answer text, inside its ``<think>`` block (the
    chat template opened it in the prompt; it is written out here so the text reads as the model's whole reply)."""

    def __init__(self) -> None:
        self.opened = self.closed = False

    def __call__(self, reasoning: str, content: str) -> str:
        """The text for one delta."""
        out = []
        if reasoning and not self.opened:
            out.append(f"{THINK_OPEN}\n")
            self.opened = True
        out.append(reasoning)
        if content and self.opened and not self.closed:
            out.append(f"\n{THINK_CLOSE}\n\n")
            self.closed = True
        out.append(content)
        return "".join(out)

    def end(self) -> str:
        """What closes a think block the reply never left (it ended while reasoning)."""
        if self.opened and not self.closed:
            self.closed = True
            return f"\n{THINK_CLOSE}"
        return ""


def _split(fmt: str) -> tuple[bool, bool]:
    """(reasoning in reasoning_content, reasoning in content) for a reasoning_format."""
    return fmt != "none", fmt in ("none", "deepseek-legacy")


async def _complete(stream: LLMStream, model: str, timeout: float, fmt: str = "deepseek") -> dict[str, Any]:
    reasoning: list[str] = []
    content: list[str] = []
    done: Done | None = None
    async for batch in batches(stream, timeout):
        for item in batch:
            if isinstance(item, Delta):
                reasoning.append(item.reasoning)
                content.append(item.content)
            else:
                done = item
    assert done is not None
    apart, inline = _split(fmt)
    thought, answer = "".join(reasoning).strip(), "".join(content).strip()
    if inline:
        think = InlineThink()
        answer = think(thought, answer) + think.end()
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if thought and apart:
        message["reasoning_content"] = thought
    return {
        "id": stream.request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": None}],
        "usage": _usage(done),
    }


def _usage(done: Done) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


async def _chunks(
    stream: LLMStream, model: str, include_usage: bool, timeout: float, fmt: str = "deepseek"
) -> AsyncIterator[dict[str, Any]]:
    created = int(time.time())
    apart, inline = _split(fmt)
    think = InlineThink()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": stream.request_id, "object": "chat.completion.chunk", "created": created,
                               "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            out["usage"] = None
        return out

    yield chunk({"role": "assistant", "content": ""})
    done: Done | None = None
    async for batch in batches(stream, timeout):
        reasoning = "".join(d.reasoning for d in batch if isinstance(d, Delta))
        content = "".join(d.content for d in batch if isinstance(d, Delta))
        delta: dict[str, Any] = {}
        if reasoning and apart:
            delta["reasoning_content"] = reasoning
        text = think(reasoning, content) if inline else content
        if text:
            delta["content"] = text
        if delta:
            yield chunk(delta)
        done = next((d for d in batch if isinstance(d, Done)), done)
    assert done is not None
    if inline and (tail := think.end()):
        yield chunk({"content": tail})
    yield chunk({}, done.finish_reason)
    if include_usage:
        yield {"id": stream.request_id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [], "usage": _usage(done)}


@router.post("/v1/completions", response_model=None)
async def completions(arrival: ArrivalDep, body: CompletionRequest, request: Request, runtime: RuntimeDep,
                      settings: SettingsDep) -> Any:
    """A plain-prompt completion (no chat template; all text is answer), whole or streamed."""
    engine = runtime.require_llm()
    _check_model(body.model, engine)
    body.check_supported()
    stream = await asyncio.to_thread(engine.submit_prompt, body.text(), body.to_params(), asyncio.get_running_loop(),
                                     arrival)
    model = engine.model_name
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_text_chunks(stream, model, include_usage, settings.request_timeout),
                            on_close=stream.cancel, on_shutdown=runtime.interrupt_all, done="[DONE]")
    return await unless_disconnected(request, _text_complete(stream, model, settings.request_timeout))


async def _text_complete(stream: LLMStream, model: str, timeout: float) -> dict[str, Any]:
    text: list[str] = []
    done: Done | None = None
    async for batch in batches(stream, timeout):
        text.extend(d.content for d in batch if isinstance(d, Delta))
        done = next((d for d in batch if isinstance(d, Done)), done)
    assert done is not None
    return {"id": stream.request_id.replace("chatcmpl-", "cmpl-"), "object": "text_completion",
            "created": int(time.time()), "model": model,
            "choices": [{"text": "".join(text), "index": 0, "logprobs": None, "finish_reason": done.finish_reason}],
            "usage": _usage(done)}


async def _text_chunks(stream: LLMStream, model: str, include_usage: bool,
                       timeout: float) -> AsyncIterator[dict[str, Any]]:
    created, rid = int(time.time()), stream.request_id.replace("chatcmpl-", "cmpl-")

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model,
                               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    done: Done | None = None
    async for batch in batches(stream, timeout):
        text = "".join(d.content for d in batch if isinstance(d, Delta))
        if text:
            yield chunk(text)
        done = next((d for d in batch if isinstance(d, Done)), done)
    assert done is not None
    yield chunk("", done.finish_reason)
    if include_usage:
        yield {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
               "usage": _usage(done)}
