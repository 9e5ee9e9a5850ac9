"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from aipc_chat.api.deps import ArrivalDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.openai import ChatCompletionRequest
from aipc_chat.api.sse import sse_response
from aipc_chat.engines.contract import Delta, Done, LLMEngineClient, LLMStream, batches
from aipc_chat.errors import ModelNotFound

router = APIRouter(tags=["openai"])


@router.get("/v1/models")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """The LLM first, then the image model (marked ``"type": "image"``)."""
    created = int(time.time())
    data = []
    for kind, status in runtime.status.items():
        engine = runtime.llm if kind == "llm" else runtime.image
        name = engine.model_name if engine is not None and engine.model_name else status.choice.name
        local = engine is not None and status.device != "remote"  # a remote engine's health is a network call
        data.append({"id": name, "object": "model", "created": created, "owned_by": "aipc-chat",
                     "type": "llm" if kind == "llm" else "image", "device": status.device,
                     "state": engine.health().state if local and engine is not None else status.state})
    return {"object": "list", "data": data}


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
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_chunks(stream, engine.model_name, include_usage, settings.request_timeout),
                            on_close=stream.cancel, on_shutdown=runtime.interrupt_all, done="[DONE]")
    return await unless_disconnected(request, _complete(stream, engine.model_name, settings.request_timeout))


async def _complete(stream: LLMStream, model: str, timeout: float) -> dict[str, Any]:
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
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content).strip()}
    thought = "".join(reasoning).strip()
    if thought:
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
    stream: LLMStream, model: str, include_usage: bool, timeout: float
) -> AsyncIterator[dict[str, Any]]:
    created = int(time.time())

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
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        if delta:
            yield chunk(delta)
        done = next((d for d in batch if isinstance(d, Done)), done)
    assert done is not None
    yield chunk({}, done.finish_reason)
    if include_usage:
        yield {"id": stream.request_id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [], "usage": _usage(done)}
