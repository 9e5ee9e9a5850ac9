"""Hand results from an engine's owner thread to an asyncio consumer, with cancellation."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from aipc_chat.errors import NotReady, RequestTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


class ThreadToAsync(Generic[T]):
    """A one-way channel: the owner thread ``put``s items, one asyncio task iterates them.

    ``cancel()`` may be called from either side; the owner thread polls ``cancelled`` and stops the work.

    Hand-off: an owner whose next call holds the GIL for a long time (openvino-genai's ``step()`` does, for a whole
    decode step) would keep the event loop from sending what it just put. ``wait_handed_off`` lets the owner wait,
    briefly, until a consumer that was waiting for items has taken them and come back for more, so each token
    reaches the client before the next step starts rather than after it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._closed = False
        self._carry: object | None = None  # an end or error that came right after a batch
        self._parked = threading.Event()  # the consumer waits on an empty queue
        self._owed = False  # items went to a parked consumer: the owner may wait for it to take them

    @property
    def cancelled(self) -> bool:
        """True once the consumer (or a shutdown) asked the work to stop."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the owner thread to stop this work at its next step."""
        self._cancelled.set()

    def put(self, item: T | BaseException) -> None:
        """Called from the owner thread: deliver an item (or an exception that ends the stream)."""
        if self._parked.is_set():
            self._parked.clear()
            self._owed = True
        self._send(item)

    @property
    def owes_handoff(self) -> bool:
        """Owner thread: items went to a consumer that was waiting for them and it has not come back yet."""
        return self._owed and not self._closed and not self._cancelled.is_set()

    def wait_handed_off(self, deadline: float) -> bool:
        """Owner thread: wait until (``time.perf_counter()``) ``deadline`` for the consumer to take what was put.

        True when it did. A consumer that is slow (a client not reading) is not waited for again until it catches
        up and waits for items once more.
        """
        self._owed = False
        return self._parked.wait(max(0.0, deadline - time.perf_counter()))

    def interrupt(self, error: BaseException) -> None:
        """Called on the event loop: end the stream with ``error`` after the items already queued."""
        self._queue.put_nowait(error)

    def close(self) -> None:
        """Called from the owner thread: no more items."""
        if not self._closed:
            self._closed = True
            self._send(_END)

    def _send(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
            log.debug("dropped an item for a closed event loop")

    async def get_batch(self) -> list[T] | None:
        """Wait for the next item, then take every other item already waiting; None at the end.

        An exception (or the end) that follows ready items is kept for the next call, so order is never lost.
        """
        items: list[T] = []
        if self._carry is not None:
            item, self._carry = self._carry, None
        elif self._queue.empty():
            self._parked.set()
            try:
                item = await self._queue.get()
            finally:
                self._parked.clear()
        else:
            item = self._queue.get_nowait()
        while True:
            if isinstance(item, BaseException):
                if items:
                    self._carry = item
                    return items
                raise item
            if item is _END:
                self._carry = _END  # after a batch, or to stay at the end for any further call
                return items or None
            items.append(item)  # type: ignore[arg-type]
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return items

    async def __aiter__(self) -> AsyncIterator[T]:
        while (batch := await self.get_batch()) is not None:
            for item in batch:
                yield item


RETRY_AFTER = 5  # seconds, for a request that timed out before it started


async def batches(stream: ThreadToAsync[T], timeout: float) -> AsyncIterator[list[T]]:
    """Iterate a stream's batches of ready items; cancel the work past ``timeout``: RequestTimeout (504) once it
    had started, NotReady (503 with Retry-After) when it never did (it waited for a load or in the queue).

    One timer per stream (not a ``wait_for`` per batch, which costs a task per token): at the deadline it queues
    the error behind whatever already arrived.
    """
    started = False

    def expire() -> None:
        if started:
            stream.interrupt(RequestTimeout(f"The request took longer than {timeout:g} s and was cancelled."))
        else:  # it waited the whole time (for a model loading on demand, or in a long queue): retry later
            stream.interrupt(NotReady(f"The request did not start within {timeout:g} s (the model was loading or "
                                      "the queue was long) and was cancelled; retry.", retry_after=RETRY_AFTER))

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        while (batch := await stream.get_batch()) is not None:
            started = True
            yield batch
    finally:
        timer.cancel()
        stream.cancel()  # idempotent; frees the slot if the consumer stopped early (or timed out)
