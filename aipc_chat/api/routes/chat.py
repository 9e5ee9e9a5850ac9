"""``POST /chat`` (the multimodal turn) and the per-user history endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from aipc_chat.api.deps import ArrivalDep, RuntimeDep
from aipc_chat.api.schemas.chat import SAFE_ID, ChatRequest
from aipc_chat.api.sse import SSEItem, sse_response
from aipc_chat.orchestrator import ChatTurnResult

router = APIRouter(tags=["chat"])
UserId = Annotated[str, Path(pattern=SAFE_ID)]
ConversationId = Annotated[str | None, Query(pattern=SAFE_ID)]


def _absolute(request: Request) -> Any:
    base = str(request.base_url).rstrip("/")
    return lambda path: base + path if path.startswith("/") else path


@router.post("/chat", response_model=None)
async def chat(arrival: ArrivalDep, body: ChatRequest, request: Request, runtime: RuntimeDep) -> Any:
    """One turn: the answer (reasoning apart) and, when a picture helps, an image the assistant prompted."""
    request.app.state.chat_limiter.check(body.user_id)
    runtime.require_llm()  # fail with 503 before any stream starts
    events = runtime.orchestrator.run(body.to_turn(), arrival)
    url = _absolute(request)
    if body.stream:
        return sse_response(_named(events, url), named_errors=True, on_shutdown=runtime.interrupt_all)
    result: ChatTurnResult | None = None
    async for kind, payload in events:
        if kind == "done":
            result = payload["result"]
    assert result is not None
    return result.as_dict(url)


async def _named(events: AsyncIterator[tuple[str, dict[str, Any]]], url: Any) -> AsyncIterator[SSEItem]:
    async for kind, payload in events:
        if kind == "done":
            yield "done", payload["result"].as_dict(url)
        elif "image_urls" in payload:
            yield kind, {**payload, "image_urls": [url(u) for u in payload["image_urls"]]}
        else:
            yield kind, payload


@router.get("/chat/{user_id}/history")
async def get_history(user_id: UserId, request: Request, runtime: RuntimeDep,
                      conversation_id: ConversationId = None) -> dict[str, Any]:
    """The conversation's messages, oldest first (the default conversation unless one is named)."""
    conv = conversation_id or "default"
    messages = await asyncio.to_thread(runtime.history.messages, user_id, conv)
    url = _absolute(request)
    out = []
    for m in messages:
        item = m.as_dict()
        if "image_urls" in item:
            item["image_urls"] = [url(u) for u in item["image_urls"]]
        out.append(item)
    return {"user_id": user_id, "conversation_id": conv, "messages": out}


@router.delete("/chat/{user_id}/history")
async def delete_history(user_id: UserId, runtime: RuntimeDep,
                         conversation_id: ConversationId = None) -> dict[str, Any]:
    """Delete one conversation, or all of the user's when none is named."""
    deleted = await asyncio.to_thread(runtime.history.delete, user_id, conversation_id)
    return {"user_id": user_id, "conversation_id": conversation_id, "deleted_messages": deleted}


@router.get("/chat/{user_id}/conversations")
async def conversations(user_id: UserId, runtime: RuntimeDep) -> dict[str, Any]:
    """The user's conversations, most recent first."""
    return {"user_id": user_id, "conversations": await asyncio.to_thread(runtime.history.conversations, user_id)}


