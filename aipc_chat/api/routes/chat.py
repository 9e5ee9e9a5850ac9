"""``POST /chat`` (the multimodal turn), what its options may be (``GET /chat/options``) and the per-user history
endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from aipc_chat.api.deps import ArrivalDep, CallerDep, RuntimeDep, SettingsDep, act_as
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.routes.images import image_store, image_url
from aipc_chat.api.schemas.chat import SAFE_ID, ChatRequest
from aipc_chat.api.sse import SSEItem, sse_response
from aipc_chat.errors import AipcError
from aipc_chat.orchestrator import ChatTurnResult
from aipc_chat.provision.resolve import Kind
from aipc_chat.runtime import Runtime
from aipc_chat.serving.options import check_sampler, image_limits

log = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])
UserId = Annotated[str, Path(pattern=SAFE_ID)]
ConversationId = Annotated[str | None, Query(pattern=SAFE_ID)]


def _urls(request: Request) -> Callable[[str], str]:
    """Image name -> its absolute URL."""
    return lambda name: image_url(request, name)


@router.post("/chat", response_model=None)
async def chat(arrival: ArrivalDep, body: ChatRequest, request: Request, runtime: RuntimeDep,
               settings: SettingsDep, caller: CallerDep) -> Any:
    """One turn: the answer (reasoning apart) and, when a picture helps, an image the assistant prompted."""
    act_as(caller, body.user_id)
    limiter = request.app.state.chat_limiter
    if limiter.shared:  # a transaction in the shared database
        await asyncio.to_thread(limiter.check, body.user_id)
    else:
        limiter.check(body.user_id)
    runtime.require_llm()  # fail with 503 before any stream starts
    if body.image != "never":  # a text-only turn draws nothing: its picture options are not looked at
        check_sampler(image_limits(runtime.image, settings), body.image_options.sampler)
    events = runtime.orchestrator.run(body.to_turn(), arrival)
    url = _urls(request)
    if body.stream:
        return sse_response(_named(events, url), named_errors=True, on_shutdown=runtime.interrupt_all)
    result = await unless_disconnected(request, _last_result(events))
    return result.as_dict(url)


async def _last_result(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> ChatTurnResult:
    result: ChatTurnResult | None = None
    async for kind, payload in events:
        if kind == "done":
            result = payload["result"]
    assert result is not None
    return result


async def _named(events: AsyncIterator[tuple[str, dict[str, Any]]],
                 url: Callable[[str], str]) -> AsyncIterator[SSEItem]:
    async for kind, payload in events:
        if kind == "done":
            yield "done", payload["result"].as_dict(url)
        elif "image_names" in payload:
            names = payload["image_names"]
            yield kind, {**{k: v for k, v in payload.items() if k != "image_names"},
                         "image_urls": [url(n) for n in names]}
        else:
            yield kind, payload


@router.get("/chat/options")
async def options(runtime: RuntimeDep, settings: SettingsDep) -> dict[str, Any]:
    """What a turn's image options may be for the served image model (``image``: null when none is served), the
    served models' names, and whether they are the demo models."""
    served = {kind: status for kind, status in runtime.status.items() if status.state != "disabled"}
    image = None
    if "image" in served:
        image = {**image_limits(runtime.image, settings).as_dict(), "ready": runtime.image is not None}
    names = {kind: _model_name(runtime, kind) for kind in served}
    return {"image": image, "demo": any(status.choice.source == "demo" for status in served.values()),
            "models": {"llm": names.get("llm"), "image": names.get("image")}}


def _model_name(runtime: Runtime, kind: Kind) -> str:
    """The engine's name for its model once it is built (a remote one learns it), else the configured one."""
    engine = runtime.engine(kind)
    return engine.model_name if engine is not None and engine.model_name else runtime.status[kind].choice.name


@router.get("/chat/me")
async def me(caller: CallerDep) -> dict[str, Any]:
    """Who the key belongs to: ``user_id`` with per-user keys (AIPC_USERS_FILE), else null (any user id goes)."""
    return {"user_id": caller, "users_separated": caller is not None}


@router.get("/chat/{user_id}/history")
async def get_history(user_id: UserId, request: Request, runtime: RuntimeDep, caller: CallerDep,
                      conversation_id: ConversationId = None) -> dict[str, Any]:
    """The conversation's messages, oldest first (the default conversation unless one is named)."""
    act_as(caller, user_id)
    conv = conversation_id or "default"
    messages = await asyncio.to_thread(runtime.history.messages, user_id, conv)
    url = _urls(request)
    return {"user_id": user_id, "conversation_id": conv, "messages": [m.as_dict(url) for m in messages]}


@router.delete("/chat/{user_id}/history")
async def delete_history(user_id: UserId, request: Request, runtime: RuntimeDep, caller: CallerDep,
                         conversation_id: ConversationId = None) -> dict[str, Any]:
    """Delete one conversation, or all of the user's when none is named, with the pictures its answers showed.

    The messages go first: a picture store that fails afterwards leaves pictures no message points to (retention
    prunes them), never a message whose picture is gone; the answer then says so in ``image_error``."""
    act_as(caller, user_id)
    removed = await asyncio.to_thread(runtime.history.delete, user_id, conversation_id)
    out: dict[str, Any] = {"user_id": user_id, "conversation_id": conversation_id,
                           "deleted_messages": removed.messages, "deleted_images": 0}
    if removed.image_names:
        try:
            out["deleted_images"] = await asyncio.to_thread(image_store(request).delete, removed.image_names)
        except Exception as exc:  # the messages are gone: say so whatever failed after them, never a 500
            error = exc if isinstance(exc, AipcError) else AipcError(f"The pictures could not be deleted: {exc}")
            log.warning("deleted %s's history but not its %d pictures: %s", user_id, len(removed.image_names),
                        error.message)
            out["image_error"] = {"code": error.code or "image_store_error", "message": error.message}
    return out


@router.get("/chat/{user_id}/conversations")
async def conversations(user_id: UserId, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """The user's conversations, most recent first."""
    act_as(caller, user_id)
    return {"user_id": user_id, "conversations": await asyncio.to_thread(runtime.history.conversations, user_id)}


