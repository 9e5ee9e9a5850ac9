"""The asyncio side of the engines' plain handles: reading an LLM stream in batches with a per-request timeout, and
waiting for an image job. The engines never see an event loop; this adapter is the API side's."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from aipc_chat.engines.contract import RETRY_AFTER_SECONDS, ImageJob
from aipc_chat.engines.stream import END, Channel
from aipc_chat.errors import NotReady, RequestTimeout

T = TypeVar("T")


class Reader(Generic[T]):
    """Reads one channel on the running event loop: each call returns what has arrived, waiting for it if none."""

    def __init__(self, channel: Channel[T]) -> None:
        self.channel = channel
        self._arrived = asyncio.Event()
        self._pending: deque[object] = deque()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody is listening
                loop.call_soon_threadsafe(self._arrived.set)

        channel.on_item(wake)

    async def get_batch(self) -> list[T] | None:
        """Wait for the next item, then take every other item already there; None at the end. An exception (or
        the end) that follows items is kept for the next call, so order is never lost."""
        while not self._pending:
            self._arrived.clear()
            self._pending.extend(self.channel.take())
            if self._pending:
                break
            self.channel.park(True)
            try:
                await self._arrived.wait()
            finally:
                self.channel.park(False)
        items: list[T] = []
        while self._pending:
            item = self._pending[0]
            if item is END:  # stays: every further call is at the end too
                return items or None
            if isinstance(item, BaseException):
                if items:
                    return items
                self._pending.popleft()
                raise item
            items.append(self._pending.popleft())  # type: ignore[arg-type]
        return items

    async def __aiter__(self) -> AsyncIterator[T]:
        while (batch := await self.get_batch()) is not None:
            for item in batch:
                yield item


async def batches(channel: Channel[T], timeout: float) -> AsyncIterator[list[T]]:
    """Iterate a stream's batches of ready items; cancel the work past ``timeout``: RequestTimeout (504) once it
    had started, NotReady (503 with Retry-After) when it never did (it waited for a load or in the queue).

    One timer per stream (not a ``wait_for`` per batch, which costs a task per token): at the deadline it queues
    the error behind whatever already arrived.
    """
    reader = Reader(channel)
    started = False

    def expire() -> None:
        if started:
            channel.interrupt(RequestTimeout(f"The request took longer than {timeout:g} s and was cancelled."))
        else:  # it waited the whole time (for a model loading on demand, or in a long queue): retry later
            channel.interrupt(NotReady(f"The request did not start within {timeout:g} s (the model was loading "
                                       "or the queue was long) and was cancelled; retry.",
                                       retry_after=RETRY_AFTER_SECONDS))

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        while (batch := await reader.get_batch()) is not None:
            started = True
            yield batch
    finally:
        timer.cancel()
        channel.cancel()  # idempotent; frees the engine's slot if the consumer stopped early (or timed out)


async def wait_job(job: ImageJob, timeout: float) -> None:
    """Wait until the job ends; raise what ended it badly; cancel it and raise past ``timeout`` (NotReady when it
    never started, RequestTimeout when it did). A waiter that is cancelled (its client left) cancels the job."""
    ended = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wake(_: ImageJob) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(ended.set)

    job.when_done(wake)
    try:
        await asyncio.wait_for(ended.wait(), timeout)
    except asyncio.TimeoutError:
        job.cancel()
        if job.started is None:  # it waited the whole time (for a load on demand, or in the queue)
            raise NotReady(f"The image did not start within {timeout:g} s (the model was loading or the queue "
                           "was long) and was cancelled; retry.", retry_after=RETRY_AFTER_SECONDS) from None
        raise RequestTimeout(f"The image took longer than {timeout:g} s and was cancelled.") from None
    except asyncio.CancelledError:  # whoever waited is gone (a client that disconnected): so is the job
        job.cancel()
        raise
    job.raise_for_state()
