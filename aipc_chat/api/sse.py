"""Server-sent events in one place: ``data: {json}``, ``data: [DONE]``, errors as a last event, keep-alives."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse

from aipc_chat.errors import AipcError

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 5


SSEItem = dict[str, Any] | str | tuple[str, dict[str, Any]]


def sse_response(events: AsyncIterator[SSEItem], *, on_close: Callable[[], None] = lambda: None,
                 named_errors: bool = False) -> EventSourceResponse:
    """Stream JSON events (``(name, data)`` tuples become named events); an error raised mid-stream becomes a
    final error event (named ``error`` when ``named_errors``); ``on_close`` always runs."""

    def error_event(body: dict[str, Any]) -> dict[str, str]:
        event = {"data": json.dumps(body)}
        return {"event": "error", **event} if named_errors else event

    async def publish() -> AsyncIterator[dict[str, str]]:
        try:
            async for item in events:
                if isinstance(item, tuple):
                    yield {"event": item[0], "data": json.dumps(item[1], ensure_ascii=False)}
                else:
                    yield {"data": item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)}
        except AipcError as exc:
            yield error_event(exc.to_dict())
        except Exception:
            log.exception("stream failed")
            yield error_event({"error": {"message": "Internal server error.", "type": "server_error",
                                         "param": None, "code": "internal_error"}})
        finally:
            on_close()  # runs on disconnect too: sse-starlette cancels this generator

    return EventSourceResponse(publish(), ping=KEEPALIVE_SECONDS, sep="\n",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
