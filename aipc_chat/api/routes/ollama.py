"""Ollama's API over the same LLM engine: ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/chat``,
``/api/generate``; clear Ollama-shaped errors for what this server does not do (pulling, embeddings, ...).

Streams are NDJSON (one JSON object a line), as Ollama's; every line of ``/api/chat`` has ``message.role``, every
line of ``/api/generate`` has ``response``; the last line has ``done: true``, the counts and the durations in
nanoseconds. Names match bare or with ``:latest``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from aipc_chat.api.deps import ArrivalDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.ollama import OllamaChatRequest, OllamaGenerateRequest, OllamaModelRequest, _Generation
from aipc_chat.engines.contract import Delta, Done, GenParams, LLMEngineClient, LLMStream
from aipc_chat.engines.stream import batches
from aipc_chat.errors import AipcError, InvalidRequest, ModelNotFound, NotFound
from aipc_chat.provision.card import ModelCard, model_card
from aipc_chat.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(tags=["ollama"])

OLLAMA_API_VERSION = "0.12.6"  # the Ollama release whose API this follows (clients check it for features)
NEVER = datetime(2318, 1, 1, tzinfo=UTC)  # Ollama's expires_at for a model kept loaded for good


def now() -> str:
    """RFC 3339 in UTC, as Ollama writes ``created_at``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def bare(name: str) -> str:
    """A name without ``:latest``."""
    return name.removesuffix(":latest")


def tagged(name: str) -> str:
    """A name with a tag (``:latest`` unless it has one)."""
    return name if ":" in name.split("/")[-1] else f"{name}:latest"


def served_llm(runtime: Runtime, requested: str | None = None) -> LLMEngineClient:
    """The LLM engine, checking that ``requested`` names it (Ollama's 404 otherwise)."""
    engine = runtime.require_llm()
    if requested is not None and bare(requested) != bare(engine.model_name):
        raise ModelNotFound(f"model '{requested}' not found; this server serves '{tagged(engine.model_name)}'",
                            param="model")
    return engine


def _card(runtime: Runtime) -> ModelCard | None:
    path = runtime.status["llm"].choice.path
    return model_card(path) if path is not None and path.exists() else None


def _details(card: ModelCard | None) -> dict[str, Any]:
    if card is None:
        return {"parent_model": "", "format": "remote", "family": "", "families": None, "parameter_size": "",
                "quantization_level": ""}
    return {"parent_model": "", "format": card.format, "family": card.family, "families": [card.family],
            "parameter_size": card.parameter_size, "quantization_level": card.quantization}


def _listing(runtime: Runtime, name: str) -> dict[str, Any]:
    card = _card(runtime)
    modified = datetime.fromtimestamp(card.modified, UTC) if card else datetime.now(UTC)
    return {"name": tagged(name), "model": tagged(name), "modified_at": modified.isoformat().replace("+00:00", "Z"),
            "size": card.size_bytes if card else 0, "digest": card.digest if card else "", "details": _details(card)}


@router.get("/api/version")
async def version() -> dict[str, str]:
    """The Ollama API version this server follows."""
    return {"version": OLLAMA_API_VERSION}


@router.get("/api/tags")
async def tags(runtime: RuntimeDep) -> dict[str, Any]:
    """The LLM this server serves (loaded or not); none when it serves no LLM."""
    if runtime.status["llm"].state == "disabled":
        return {"models": []}
    engine = runtime.llm
    name = engine.model_name if engine is not None and engine.model_name else runtime.status["llm"].choice.name
    return {"models": [_listing(runtime, name)]}


@router.get("/api/ps")
async def running(runtime: RuntimeDep) -> dict[str, Any]:
    """The LLM while it is loaded here, its resident size and when an idle unload will let it go."""
    engine = runtime.llm
    left = engine.keep_alive_left() if engine is not None else None
    if engine is None or left is None:
        return {"models": []}
    row = _listing(runtime, engine.model_name)
    slot = runtime.residency.slots.get("llm")
    resident = slot.resident_mb if slot is not None and slot.resident_mb else None
    expires = NEVER if left == math.inf else datetime.now(UTC) + timedelta(seconds=left)
    row.update(size=int(resident * 2**20) if resident else row["size"], size_vram=0,
               expires_at=expires.isoformat().replace("+00:00", "Z"), context_length=engine.context_length)
    del row["modified_at"]
    return {"models": [row]}


@router.post("/api/show")
async def show(body: OllamaModelRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """The model's details, template and ``model_info``."""
    engine = served_llm(runtime, body.model_name)
    card = _card(runtime)
    capabilities = ["completion", *(["thinking"] if engine.reasons else [])]
    modified = datetime.fromtimestamp(card.modified, UTC) if card else datetime.now(UTC)
    return {"license": "", "modelfile": f"# served by aipc-chat\nFROM {runtime.status['llm'].choice.path or ''}\n",
            "parameters": "", "template": engine.chat_template, "details": _details(card),
            "model_info": card.info if card else {}, "capabilities": capabilities,
            "modified_at": modified.isoformat().replace("+00:00", "Z")}


@router.post("/api/chat", response_model=None)
async def chat(arrival: ArrivalDep, body: OllamaChatRequest, request: Request, runtime: RuntimeDep,
               settings: SettingsDep) -> Any:
    """Ollama's chat: NDJSON stream by default, or one object with ``stream: false``."""
    t0 = time.perf_counter()
    engine = served_llm(runtime, body.model)
    body.check_supported()
    if not body.messages:  # no messages: load the model (or, with keep_alive 0, unload it)
        arrival.settle()
        return await _load_or_unload(engine, body, t0, {"message": {"role": "assistant", "content": ""}},
                                     settings.request_timeout)
    params = _params(body, engine)
    stream = await asyncio.to_thread(engine.submit, body.chat_messages(), params, asyncio.get_running_loop(),
                                     arrival)

    def line(reasoning: str, content: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["thinking"] = reasoning
        return {"message": message}

    return await _respond(request, stream, engine, body, t0, line, settings.request_timeout)


@router.post("/api/generate", response_model=None)
async def generate(arrival: ArrivalDep, body: OllamaGenerateRequest, request: Request, runtime: RuntimeDep,
                   settings: SettingsDep) -> Any:
    """Ollama's completion of one prompt (templated unless ``raw``)."""
    t0 = time.perf_counter()
    engine = served_llm(runtime, body.model)
    body.check_supported()
    if not body.prompt:
        arrival.settle()
        return await _load_or_unload(engine, body, t0, {"response": ""}, settings.request_timeout)
    params = _params(body, engine)
    loop = asyncio.get_running_loop()
    if body.raw:
        stream = await asyncio.to_thread(engine.submit_prompt, body.prompt, params, loop, arrival)
    else:
        stream = await asyncio.to_thread(engine.submit, body.chat_messages(), params, loop, arrival)

    def line(reasoning: str, content: str) -> dict[str, Any]:
        out: dict[str, Any] = {"response": content}
        if reasoning:
            out["thinking"] = reasoning
        return out

    return await _respond(request, stream, engine, body, t0, line, settings.request_timeout)


def _params(body: _Generation, engine: LLMEngineClient) -> GenParams:
    return body.to_params(engine.context_length)


async def _load_or_unload(engine: LLMEngineClient, body: _Generation, t0: float, empty: dict[str, Any],
                          timeout: float) -> Any:
    """Ollama's empty request: load the model (a one-token answer loads it), or unload it with keep_alive 0."""
    if body.keep_alive == 0:
        engine.release()
        reason = "unload"
    else:
        params = GenParams(max_tokens=1, temperature=0, keep_alive=body.keep_alive)
        stream = await asyncio.to_thread(engine.submit, [{"role": "user", "content": "Hi"}], params,
                                         asyncio.get_running_loop())
        async for _ in batches(stream, timeout):
            pass
        reason = "load"
    final = {"model": tagged(engine.model_name), "created_at": now(), **empty, "done": True,
             "done_reason": reason, "total_duration": _ns(time.perf_counter() - t0)}
    if not body.stream:
        return final
    return _ndjson(_one(final))


async def _one(item: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield item


async def _respond(request: Request, stream: LLMStream, engine: LLMEngineClient, body: _Generation, t0: float,
                   line: Callable[[str, str], dict[str, Any]], timeout: float) -> Any:
    name = tagged(engine.model_name)
    think = body.thinks

    async def lines() -> AsyncIterator[dict[str, Any]]:
        done: Done | None = None
        async for batch in batches(stream, timeout):
            reasoning = "".join(d.reasoning for d in batch if isinstance(d, Delta)) if think else ""
            content = "".join(d.content for d in batch if isinstance(d, Delta))
            if reasoning or content:
                yield {"model": name, "created_at": now(), **line(reasoning, content), "done": False}
            done = next((d for d in batch if isinstance(d, Done)), done)
        assert done is not None
        yield {"model": name, "created_at": now(), **line("", ""), "done": True, **_final(done, t0)}

    if body.stream:
        return _ndjson(lines(), on_close=stream.cancel)

    async def whole() -> dict[str, Any]:
        reasoning: list[str] = []
        content: list[str] = []
        last: dict[str, Any] = {}
        async for item in lines():
            part = item.get("message", item)
            reasoning.append(part.get("thinking", ""))
            content.append(part.get("content", part.get("response", "")))
            last = item
        text, thought = "".join(content).strip(), "".join(reasoning).strip()
        return {**last, **line(thought, text)}

    return await unless_disconnected(request, whole())


def _final(done: Done, t0: float) -> dict[str, Any]:
    """The last line's reason, counts and durations (ns): load is the wait for the engine (a reload included),
    prompt evaluation runs to the first token, evaluation from there to the end."""
    timing = done.timing
    end = timing.finished or time.perf_counter()
    started = timing.started or timing.queued
    first = timing.first_token or end
    return {"done_reason": done.finish_reason, "total_duration": _ns(time.perf_counter() - t0),
            "load_duration": _ns(started - timing.queued), "prompt_eval_count": done.prompt_tokens,
            "prompt_eval_duration": _ns(first - started), "eval_count": done.completion_tokens,
            "eval_duration": _ns(end - first)}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _ndjson(items: AsyncIterator[dict[str, Any]], on_close: Callable[[], None] = lambda: None) -> StreamingResponse:
    """One JSON object a line; an error after the stream started is a last ``{"error": ...}`` line."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in items:
                yield (json.dumps(item, ensure_ascii=False) + "\n").encode()
        except AipcError as exc:
            yield (json.dumps({"error": exc.message}) + "\n").encode()
        except Exception:  # as the SSE helper does: logged, and a generic last line
            log.exception("stream failed")
            yield (json.dumps({"error": "Internal server error."}) + "\n").encode()
        finally:
            on_close()

    return StreamingResponse(body(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/api/pull")
async def pull(body: OllamaModelRequest, runtime: RuntimeDep) -> Any:
    """The served model "pulls" at once; any other cannot be pulled through this API."""
    name = body.model_name
    engine = runtime.llm
    if engine is None or bare(name) != bare(engine.model_name):
        served = tagged(engine.model_name) if engine is not None else runtime.status["llm"].choice.name
        raise NotFound(f"pull model manifest: model '{name}' is not available here; aipc-chat serves '{served}' "
                       "and fetches models with `aipc-chat download` (or AIPC_LLM_PATH=ollama:NAME for a model "
                       "Ollama has pulled)")
    done = {"status": "success"}
    return _ndjson(_one(done)) if body.stream else done


@router.post("/api/embed")
@router.post("/api/embeddings")
async def embeddings() -> Any:
    """No embedding model here."""
    raise InvalidRequest("this server does not support embeddings: it serves a chat model and an image model",
                         param="model")


@router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD"], include_in_schema=False)
async def unsupported(rest: str) -> Any:
    """Ollama's model management (create, copy, delete, push, blobs) does not apply to this server."""
    raise NotFound(f"/api/{rest} is not supported by aipc-chat; it speaks /api/version, tags, show, ps, chat, "
                   "generate and pull")

