"""OpenAI-compatible ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` and
``GET /v1/models/{id}``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from aipc_chat.api.deps import ArrivalDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.openai import ChatCompletionRequest, CompletionRequest
from aipc_chat.api.sse import sse_response
from aipc_chat.errors import ModelNotFound
from aipc_chat.reasoning import THINK_CLOSE, THINK_OPEN
from aipc_chat.runtime import Runtime
from aipc_chat.serving import Generation, model_names, names_match, open_stream, resolve_model
from aipc_chat.serving.tools import ToolCall, ToolCallReader

router = APIRouter(tags=["openai"])


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """One model by id (``client.models.retrieve``); 404 ``model_not_found`` for any other."""
    for model in _models(runtime):
        if names_match(model_id, model_names(runtime, model["type"])):
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
        name = model_names(runtime, kind)[0]
        local = engine is not None and status.device != "remote"  # a remote engine's health is a network call
        data.append({"id": name, "object": "model", "created": created, "owned_by": "aipc-chat",
                     "type": "llm" if kind == "llm" else "image", "device": status.device,
                     "state": engine.health().state if local and engine is not None else status.state})
    if runtime.embedding_status is not None:
        embedder = runtime.embedding
        data.append({"id": runtime.embedding_status["model"], "object": "model", "created": created,
                     "owned_by": "aipc-chat", "type": "embedding", "device": runtime.embedding_status["device"],
                     "state": embedder.health().state if embedder is not None else runtime.embedding_status["state"]})
    return data


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(arrival: ArrivalDep, body: ChatCompletionRequest, request: Request, runtime: RuntimeDep,
                           settings: SettingsDep) -> Any:
    """Chat completion, whole or streamed as SSE; reasoning goes in ``reasoning_content``."""
    engine = resolve_model(runtime, "llm", body.model)
    body.check_supported()
    generation = await open_stream(engine, body.chat_messages(), body.to_params(), arrival,
                                   timeout=settings.request_timeout)
    fmt = body.reasoning_format or settings.reasoning_format
    tools = body.tool_set() is not None
    if body.stream:
        return sse_response(_chunks(generation, engine.model_name, body.include_usage, fmt, tools),
                            on_close=generation.cancel, on_shutdown=runtime.interrupt_all, done="[DONE]")
    return await unless_disconnected(request, _complete(generation, engine.model_name, fmt, tools))


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


def call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """One call in OpenAI's shape (with its ``index`` when streamed)."""
    out: dict[str, Any] = {"index": index} if index is not None else {}
    return {**out, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json}}


def _finish(reason: str, calls: bool) -> str:
    return "tool_calls" if calls and reason == "stop" else reason


async def _complete(generation: Generation, model: str, fmt: str = "deepseek", tools: bool = False) -> dict[str, Any]:
    reply = await generation.collect()
    apart, inline = _split(fmt)
    thought, answer = reply.reasoning.strip(), reply.content.strip()
    calls: list[ToolCall] = []
    if tools:
        answer, calls = ToolCallReader().split(answer)
    if inline:
        think = InlineThink()
        answer = think(thought, answer) + think.end()
    message: dict[str, Any] = {"role": "assistant", "content": answer or (None if calls else "")}
    if thought and apart:
        message["reasoning_content"] = thought
    if calls:
        message["tool_calls"] = [call_json(call) for call in calls]
    return {
        "id": reply.request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply.finish_reason, bool(calls)),
                     "logprobs": None}],
        "usage": reply.usage,
    }


class _StreamedCalls:
    """Tool calls out of a streamed answer (when the request has tools), as ``delta.tool_calls`` items."""

    def __init__(self, tools: bool) -> None:
        self.reader = ToolCallReader() if tools else None

    def feed(self, content: str) -> tuple[str, list[dict[str, Any]]]:
        """The text to send and the calls this piece completed."""
        if self.reader is None:
            return content, []
        first = len(self.reader.calls)
        content, calls = self.reader.feed(content)
        return content, [call_json(call, first + i) for i, call in enumerate(calls)]

    def end(self) -> str:
        """Text held back to the end."""
        return self.reader.end() if self.reader is not None else ""

    @property
    def called(self) -> bool:
        """Whether the reply made a call."""
        return bool(self.reader and self.reader.calls)


async def _chunks(generation: Generation, model: str, include_usage: bool,
                  fmt: str = "deepseek", tools: bool = False) -> AsyncIterator[dict[str, Any]]:
    created = int(time.time())
    apart, inline = _split(fmt)
    think = InlineThink()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": generation.request_id, "object": "chat.completion.chunk", "created": created,
                               "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            out["usage"] = None
        return out

    reader = _StreamedCalls(tools)
    yield chunk({"role": "assistant", "content": ""})
    async for reasoning, content in generation.chunks():
        delta: dict[str, Any] = {}
        if reasoning and apart:
            delta["reasoning_content"] = reasoning
        content, calls = reader.feed(content)
        if calls:
            delta["tool_calls"] = calls
        text = think(reasoning, content) if inline else content
        if text:
            delta["content"] = text
        if delta:
            yield chunk(delta)
    tail = reader.end()
    if tail := (think("", tail) + think.end() if inline else tail):
        yield chunk({"content": tail})
    reply = generation.reply
    yield chunk({}, _finish(reply.finish_reason, reader.called))
    if include_usage:
        yield {**chunk({}), "choices": [], "usage": reply.usage}


@router.post("/v1/completions", response_model=None)
async def completions(arrival: ArrivalDep, body: CompletionRequest, request: Request, runtime: RuntimeDep,
                      settings: SettingsDep) -> Any:
    """A plain-prompt completion (no chat template; all text is answer), whole or streamed."""
    engine = resolve_model(runtime, "llm", body.model)
    body.check_supported()
    generation = await open_stream(engine, body.text(), body.to_params(), arrival, timeout=settings.request_timeout)
    if body.stream:
        return sse_response(_text_chunks(generation, engine.model_name, body.include_usage),
                            on_close=generation.cancel, on_shutdown=runtime.interrupt_all, done="[DONE]")
    return await unless_disconnected(request, _text_complete(generation, engine.model_name))


def _text_id(generation: Generation) -> str:
    return generation.request_id.replace("chatcmpl-", "cmpl-")


async def _text_complete(generation: Generation, model: str) -> dict[str, Any]:
    reply = await generation.collect()
    return {"id": _text_id(generation), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": reply.content, "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": reply.usage}


async def _text_chunks(generation: Generation, model: str, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    created, rid = int(time.time()), _text_id(generation)

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model,
                               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            out["usage"] = None
        return out

    async for _, content in generation.chunks():
        if content:
            yield chunk(content)
    yield chunk("", generation.reply.finish_reason)
    if include_usage:
        yield {**chunk(""), "choices": [], "usage": generation.reply.usage}
