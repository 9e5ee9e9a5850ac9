"""Cancel a non-streamed request's work when its client leaves (a streamed one is cancelled by the SSE helper).

Without this an LLM reply or a picture whose client has gone runs to its end, holding a batch slot or the image
engine. The work runs as a task beside a watcher of the connection; when the client disconnects first, the task is
cancelled, and its own cleanup cancels the engine work (``batches`` cancels its LLM stream, ``wait_job``
its job, a ``/chat`` turn both).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from aipc_chat.errors import Cancelled

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (the body is read by then: the next message can only be the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelling it (and raising Cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise Cancelled("The client disconnected; its request was cancelled.")
    return task.result()
