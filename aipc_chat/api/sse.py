"""Server-sent events in one place: ``data: {json}``, ``data: [DONE]``, errors as a last event, keep-alives."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sse_starlette import EventSourceResponse

from aipc_chat.engines.stream import ThreadToAsync
from aipc_chat.errors import AipcError, RequestTimeout

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 5
T = TypeVar("T")


def sse_response(events: AsyncIterator[dict[str, Any] | str], *, on_close: Callable[[], None]) -> EventSourceResponse:
    """Stream JSON events; an error raised mid-stream becomes a final error event; ``on_close`` always runs."""

    async def publish() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in events:
                yield {"data": event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)}
        except AipcError as exc:
            yield {"data": json.dumps(exc.to_dict())}
        except Exception:
            log.exception("stream failed")
            yield {"data": json.dumps({"error": {"message": "Internal server error.", "type": "server_error",
                                                 "param": None, "code": "internal_error"}})}
        finally:
            on_close()  # runs on disconnect too: sse-starlette cancels this generator

    return EventSourceResponse(publish(), ping=KEEPALIVE_SECONDS, sep="\n",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def batches(stream: ThreadToAsync[T], timeout: float) -> AsyncIterator[list[T]]:
    """Iterate a stream's batches of ready items; cancel the work and raise RequestTimeout past ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            batch = await asyncio.wait_for(stream.get_batch(), remaining)
            if batch is None:
                return
            yield batch
    except asyncio.TimeoutError:
        stream.cancel()
        raise RequestTimeout(f"The request took longer than {timeout:g} s and was cancelled.") from None
    finally:
        stream.cancel()  # idempotent; frees the slot if the consumer stopped early
