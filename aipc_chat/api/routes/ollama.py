"""Ollama's API over the same LLM engine: ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/chat``,
``/api/generate``; clear Ollama-shaped errors for what this server does not do (pulling, embeddings, ...).

Streams are NDJSON (one JSON object a line), as Ollama's; every line of ``/api/chat`` has ``message.role``, every
line of ``/api/generate`` has ``response``; the last line has ``done: true``, the counts and the durations in
nanoseconds. Names match bare or with ``:latest``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from aipc_chat.api.deps import ArrivalDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.ollama import (
    OllamaChatRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaGeneration,
    OllamaModelRequest,
)
from aipc_chat.api.sse import ndjson_response
from aipc_chat.engines.contract import Arrival
from aipc_chat.errors import InvalidRequest, NotFound
from aipc_chat.provision.card import ModelCard, model_card
from aipc_chat.runtime import Runtime
from aipc_chat.serving import (
    Generation,
    Reply,
    load_only,
    model_names,
    names_match,
    open_stream,
    resolve_model,
    tagged,
)
from aipc_chat.serving.embeddings import embed
from aipc_chat.serving.tools import ToolCall, ToolCallReader
from aipc_chat.settings import Settings

Line = Callable[..., dict[str, Any]]  # (reasoning, content, calls=None): one NDJSON line's message part


class _JSONWhateverTheType(APIRoute):
    """Ollama reads every request body as JSON, whatever its ``Content-Type`` says: its own curl examples send
    none (curl then says form-encoded), nor do litellm's Ollama providers. So do these routes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method in ("POST", "PUT", "DELETE"):
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
            return await handler(request)

        return route


router = APIRouter(tags=["ollama"], route_class=_JSONWhateverTheType)

OLLAMA_API_VERSION = "0.12.6"  # the Ollama release whose API this follows (clients check it for features)
NEVER = datetime(2318, 1, 1, tzinfo=UTC)  # Ollama's expires_at for a model kept loaded for good


def now() -> str:
    """RFC 3339 in UTC, as Ollama writes ``created_at``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def _card(runtime: Runtime) -> ModelCard | None:
    path = runtime.status["llm"].choice.path
    # Read once per model (a GGUF header, an IR's XML): off the event loop
    return await asyncio.to_thread(model_card, path) if path is not None and path.exists() else None


def _details(card: ModelCard | None) -> dict[str, Any]:
    if card is None:
        return {"parent_model": "", "format": "remote", "family": "", "families": None, "parameter_size": "",
                "quantization_level": ""}
    return {"parent_model": "", "format": card.format, "family": card.family, "families": [card.family],
            "parameter_size": card.parameter_size, "quantization_level": card.quantization}


async def _listing(runtime: Runtime, name: str) -> dict[str, Any]:
    card = await _card(runtime)
    modified = datetime.fromtimestamp(card.modified, UTC) if card else datetime.now(UTC)
    return {"name": tagged(name), "model": tagged(name), "modified_at": modified.isoformat().replace("+00:00", "Z"),
            "size": card.size_bytes if card else 0, "digest": card.digest if card else "", "details": _details(card)}


@router.get("/api/version")
async def version() -> dict[str, str]:
    """The Ollama API version this server follows."""
    return {"version": OLLAMA_API_VERSION}


@router.get("/api/tags")
async def tags(runtime: RuntimeDep) -> dict[str, Any]:
    """The LLM this server serves (loaded or not), and its embedding model if it serves one."""
    models = [] if runtime.status["llm"].state == "disabled" else [
        await _listing(runtime, model_names(runtime, "llm")[0])]
    if runtime.embedding_status is not None:
        models.append(_embedding_row(runtime))
    return {"models": models}


def _embedding_row(runtime: Runtime) -> dict[str, Any]:
    """The embedding model as /api/tags lists it."""
    assert runtime.embedding_status is not None
    name = tagged(str(runtime.embedding_status["model"]))
    return {"name": name, "model": name, "modified_at": now(), "digest": "",
            "size": runtime.embedding.size_bytes if runtime.embedding is not None else 0,
            "details": {"format": "openvino", "family": "bert", "families": ["bert"], "parameter_size": "",
                        "quantization_level": ""}}


def _expires_at(keep_alive: float, expires_in: float | None) -> str:
    left = keep_alive if expires_in is None else expires_in  # held now: it counts from the release
    expires = NEVER if left == math.inf else datetime.now(UTC) + timedelta(seconds=left)
    return expires.isoformat().replace("+00:00", "Z")


@router.get("/api/ps")
async def running(runtime: RuntimeDep) -> dict[str, Any]:
    """The models resident here (the LLM, the embedding model), their sizes and when an idle unload lets them go."""
    snap = runtime.scheduler.snapshot()
    rows = []
    engine, view = runtime.llm, snap.models.get("llm")
    if engine is not None and view is not None and view.size_mb is not None:  # loaded here (not a remote one)
        row = await _listing(runtime, engine.model_name)
        row.update(size=int(view.size_mb * 2**20), size_vram=0,  # what its load added to RSS, as /metrics says
                   expires_at=_expires_at(view.keep_alive, view.expires_in), context_length=engine.context_length)
        rows.append(row)
    embedder, view = runtime.embedding, snap.models.get("embedding")
    if embedder is not None and view is not None and view.size_mb is not None:
        row = _embedding_row(runtime)
        row.update(size=int(view.size_mb * 2**20), size_vram=0, context_length=embedder.pooling.max_length or 0,
                   expires_at=_expires_at(view.keep_alive, view.expires_in))
        rows.append(row)
    for row in rows:
        del row["modified_at"]
    return {"models": rows}


@router.post("/api/show")
async def show(body: OllamaModelRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """The model's details, template and ``model_info``."""
    embedder = runtime.embedding
    if embedder is not None and names_match(body.model_name, model_names(runtime, "embedding")):
        return {"license": "", "modelfile": f"# served by aipc-chat\nFROM {embedder.model_dir}\n", "parameters": "",
                "template": "", "details": _embedding_row(runtime)["details"], "capabilities": ["embedding"],
                "model_info": {"general.architecture": "bert", "bert.embedding_length": embedder.dimensions,
                               "bert.context_length": embedder.pooling.max_length or 0},
                "modified_at": now()}
    engine = resolve_model(runtime, "llm", body.model_name)
    card = await _card(runtime)
    local = runtime.status["llm"].device != "remote"  # tools are served by the local engine only
    capabilities = ["completion", *(["tools"] if local else []), *(["thinking"] if engine.reasons else [])]
    modified = datetime.fromtimestamp(card.modified, UTC) if card else datetime.now(UTC)
    return {"license": "", "modelfile": f"# served by aipc-chat\nFROM {runtime.status['llm'].choice.path or ''}\n",
            "parameters": "", "template": engine.chat_template, "details": _details(card),
            "model_info": card.info if card else {}, "capabilities": capabilities,
            "modified_at": modified.isoformat().replace("+00:00", "Z")}


@router.post("/api/chat", response_model=None)
async def chat(arrival: ArrivalDep, body: OllamaChatRequest, request: Request, runtime: RuntimeDep,
               settings: SettingsDep) -> Any:
    """Ollama's chat: NDJSON stream by default, or one object with ``stream: false``."""

    def line(reasoning: str, content: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["thinking"] = reasoning
        if calls:
            message["tool_calls"] = calls
        return {"message": message}

    messages = body.chat_messages() if body.messages else None
    return await _serve(arrival, body, messages, line, request, runtime, settings, tools=body.tool_set() is not None)


def _calls(calls: list[ToolCall], first: int = 0) -> list[dict[str, Any]]:
    """Calls in Ollama's shape: arguments as an object."""
    return [{"function": {"index": first + i, "name": call.name, "arguments": call.arguments}}
            for i, call in enumerate(calls)]


@router.post("/api/generate", response_model=None)
async def generate(arrival: ArrivalDep, body: OllamaGenerateRequest, request: Request, runtime: RuntimeDep,
                   settings: SettingsDep) -> Any:
    """Ollama's completion of one prompt (templated unless ``raw``)."""

    def line(reasoning: str, content: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"response": content}
        if reasoning:
            out["thinking"] = reasoning
        return out

    prompt = (body.prompt if body.raw else body.chat_messages()) if body.prompt else None
    return await _serve(arrival, body, prompt, line, request, runtime, settings)


async def _serve(arrival: Arrival, body: OllamaGeneration, work: list[dict[str, str]] | str | None,
                 line: Line, request: Request, runtime: Runtime, settings: Settings, *, tools: bool = False) -> Any:
    """A chat or generate request: no messages (or prompt) loads the model, or with keep_alive 0 unloads it."""
    t0 = time.perf_counter()
    engine = resolve_model(runtime, "llm", body.model)
    body.check_supported()
    name = tagged(engine.model_name)
    if body.think not in (None, False) and not engine.reasons:  # Ollama's answer to the same request
        raise InvalidRequest(f'"{name}" does not support thinking', param="think")
    if work is None:
        arrival.settle()
        reason = await load_only(runtime, "llm", body.keep_alive)
        final = {"model": name, "created_at": now(), **line("", ""), "done": True, "done_reason": reason,
                 "total_duration": _ns(time.perf_counter() - t0)}
        return ndjson_response(_one(final)) if body.stream else final
    generation = await open_stream(engine, work, body.to_params(engine.context_length), arrival,
                                   timeout=settings.request_timeout)
    reader = ToolCallReader() if tools else None
    if body.stream:
        return ndjson_response(_lines(generation, name, body.thinks, t0, line, reader), on_close=generation.cancel)
    reply = await unless_disconnected(request, generation.collect())
    thought = reply.reasoning.strip() if body.thinks else ""
    content, calls = reader.split(reply.content) if reader is not None else (reply.content.strip(), [])
    return {"model": name, "created_at": now(), **line(thought, content, _calls(calls)), "done": True,
            **_final(reply, t0)}


async def _one(item: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield item


async def _lines(generation: Generation, name: str, think: bool, t0: float, line: Line,
                 reader: ToolCallReader | None = None) -> AsyncIterator[dict[str, Any]]:
    async for reasoning, content in generation.chunks():
        shown = reasoning if think else ""
        calls: list[ToolCall] = []
        first = 0
        if reader is not None:
            first = len(reader.calls)
            content, calls = reader.feed(content)
        if shown or content or calls:
            yield {"model": name, "created_at": now(), **line(shown, content, _calls(calls, first)), "done": False}
    tail = reader.end() if reader is not None else ""
    yield {"model": name, "created_at": now(), **line("", tail), "done": True, **_final(generation.reply, t0)}


def _final(reply: Reply, t0: float) -> dict[str, Any]:
    """The last line's reason, counts and durations (ns): load is the wait for the engine (a reload included),
    prompt evaluation runs to the first token, evaluation from there to the end."""
    timing = reply.timing
    end = timing.finished or time.perf_counter()
    started = timing.started or timing.queued
    first = timing.first_token or end
    return {"done_reason": reply.finish_reason, "total_duration": _ns(time.perf_counter() - t0),
            "load_duration": _ns(started - timing.queued), "prompt_eval_count": reply.prompt_tokens,
            "prompt_eval_duration": _ns(first - started), "eval_count": reply.completion_tokens,
            "eval_duration": _ns(end - first)}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@router.post("/api/pull")
async def pull(body: OllamaModelRequest, runtime: RuntimeDep) -> Any:
    """The served model "pulls" at once; any other cannot be pulled through this API."""
    name = body.model_name
    engine = runtime.llm
    if engine is None or not names_match(name, model_names(runtime, "llm")):
        served = tagged(engine.model_name) if engine is not None else runtime.status["llm"].choice.name
        raise NotFound(f"pull model manifest: model '{name}' is not available here; aipc-chat serves '{served}' "
                       "and fetches models with `aipc-chat download` (or AIPC_LLM_PATH=ollama:NAME for a model "
                       "Ollama has pulled)")
    done = {"status": "success"}
    return ndjson_response(_one(done)) if body.stream else done


@router.post("/api/embed")
async def embed_texts(body: OllamaEmbedRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Ollama's embeddings: one text or several, each vector normalised as the model's card asks."""
    done = await embed(runtime, body.model, body.texts(), truncate=body.truncate, keep_alive=body.keep_alive)
    return {"model": done.model, "embeddings": done.vectors, "total_duration": _ns(done.seconds),
            "load_duration": 0, "prompt_eval_count": done.tokens}


@router.post("/api/embeddings")
async def embed_prompt(body: OllamaEmbedRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Ollama's older embeddings endpoint: one ``prompt``, one ``embedding``."""
    texts = body.texts()
    if len(texts) != 1:
        raise InvalidRequest("/api/embeddings takes one prompt; use /api/embed for several.", param="prompt")
    done = await embed(runtime, body.model, texts, keep_alive=body.keep_alive)
    return {"embedding": done.vectors[0]}


@router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"], include_in_schema=False)
async def unsupported(rest: str) -> Any:
    """Ollama's model management (create, copy, delete, push, blobs) does not apply to this server."""
    raise NotFound(f"/api/{rest} is not supported by aipc-chat; it speaks /api/version, tags, show, ps, chat, "
                   "generate, embed, embeddings and pull")

