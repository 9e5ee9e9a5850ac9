"""Streamed responses in one place: server-sent events (``data: {json}``, ``data: [DONE]``, keep-alives) and
Ollama's NDJSON (one JSON object a line); in both an error after the stream started is a last event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from aipc_chat.api.errors import exception_payload

KEEPALIVE_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 10  # well inside uvicorn's 30 s graceful shutdown
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies pass each event on at once


SSEItem = dict[str, Any] | str | tuple[str, dict[str, Any]]


def sse_response(events: AsyncIterator[SSEItem], *, on_close: Callable[[], None] = lambda: None,
                 on_shutdown: Callable[[], None] = lambda: None, named_errors: bool = False,
                 done: str | None = None) -> EventSourceResponse:
    """Stream JSON events (``(name, data)`` tuples become named events), then ``data: {done}`` if given.

    An error raised mid-stream becomes a final error event (named ``error`` when ``named_errors``), still followed
    by ``done`` (OpenAI clients stop reading at ``[DONE]``); ``on_close`` always runs. When the server shuts down,
    ``on_shutdown`` cancels the work behind the stream, whose ``Cancelled`` error then ends it cleanly with a last
    event, within the grace period.
    """
    shutdown = anyio.Event()

    async def watch_shutdown() -> None:
        await shutdown.wait()
        on_shutdown()

    def error_event(body: dict[str, Any]) -> dict[str, str]:
        event = {"data": json.dumps(body)}
        return {"event": "error", **event} if named_errors else event

    async def publish() -> AsyncIterator[dict[str, str]]:
        watcher = asyncio.ensure_future(watch_shutdown())
        try:
            try:
                async for item in events:
                    if isinstance(item, tuple):
                        yield {"event": item[0], "data": json.dumps(item[1], ensure_ascii=False)}
                    else:
                        yield {"data": item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)}
            except Exception as exc:
                yield error_event(exception_payload("openai", exc))
            if done is not None:
                yield {"data": done}
        finally:
            watcher.cancel()
            on_close()  # runs on disconnect too: sse-starlette cancels this generator

    return EventSourceResponse(publish(), ping=KEEPALIVE_SECONDS, sep="\n", shutdown_event=shutdown,
                               shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
                               headers=NO_BUFFERING)


def ndjson_response(items: AsyncIterator[dict[str, Any]],
                    on_close: Callable[[], None] = lambda: None) -> StreamingResponse:
    """One JSON object a line (Ollama's streams); an error after the stream started is a last ``{"error": ...}``
    line; ``on_close`` always runs."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in items:
                yield (json.dumps(item, ensure_ascii=False) + "\n").encode()
        except Exception as exc:
            yield (json.dumps(exception_payload("ollama", exc)) + "\n").encode()
        finally:
            on_close()

    return StreamingResponse(body(), media_type="application/x-ndjson", headers=NO_BUFFERING)
