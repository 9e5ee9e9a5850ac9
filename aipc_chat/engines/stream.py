"""Hand results from an engine's owner thread to whoever consumes them: a plain, thread-safe channel.

The engine side knows nothing of asyncio: the owner thread ``put``s items and ``close``s the channel; the consumer
``take``s what has arrived and registers a waker that the channel calls after every item (the API side's adapter,
``serving/aio.py``, wakes its event loop with it). ``cancel()`` may be called from either side; the owner thread
polls ``cancelled`` and stops the work.

Hand-off: an owner whose next call holds the GIL for a long time (openvino-genai's ``step()`` does, for a whole
decode step) would keep the event loop from sending what it just put. ``wait_handed_off`` lets the owner wait,
briefly, until a consumer that was waiting for items (``park``ed) has taken them and come back for more, so each
token reaches the client before the next step starts rather than after it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
END = object()  # what follows the last item


class Channel(Generic[T]):
    """A one-way channel from one owner thread to one consumer."""

    def __init__(self) -> None:
        self._items: deque[object] = deque()
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self._cancelled = threading.Event()
        self._closed = False
        self._parked = threading.Event()  # the consumer waits on an empty channel
        self._owed = False  # items went to a parked consumer: the owner may wait for it to take them

    @property
    def cancelled(self) -> bool:
        """True once the consumer (or a shutdown) asked the work to stop."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the owner thread to stop this work at its next step."""
        self._cancelled.set()

    # --- the owner thread ----------------------------------------------------------------------------------------

    def put(self, item: T | BaseException) -> None:
        """Deliver an item (or an exception that ends the stream)."""
        if self._parked.is_set():
            self._parked.clear()
            self._owed = True
        self._push(item)

    def close(self) -> None:
        """No more items."""
        if not self._closed:
            self._closed = True
            self._push(END)

    @property
    def owes_handoff(self) -> bool:
        """Items went to a consumer that was waiting for them and it has not come back yet."""
        return self._owed and not self._closed and not self._cancelled.is_set()

    def wait_handed_off(self, deadline: float) -> bool:
        """Wait until (``time.perf_counter()``) ``deadline`` for the consumer to take what was put; True when it
        did. A consumer that is slow (a client not reading) is not waited for again until it catches up and waits
        for items once more."""
        self._owed = False
        return self._parked.wait(max(0.0, deadline - time.perf_counter()))

    # --- the consumer --------------------------------------------------------------------------------------------

    def on_item(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (from the putting thread) after every item from now on."""
        with self._lock:
            self._wake = wake

    def take(self) -> list[object]:
        """Everything that has arrived, in order (items, then perhaps an exception or ``END``)."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def park(self, parked: bool) -> None:
        """The consumer is (True) or is no longer (False) waiting on an empty channel."""
        if parked:
            self._parked.set()
        else:
            self._parked.clear()

    def interrupt(self, error: BaseException) -> None:
        """End the stream with ``error`` after the items already there (any thread)."""
        self._push(error)

    def _push(self, item: object) -> None:
        with self._lock:
            self._items.append(item)
            wake = self._wake
        if wake is not None:
            wake()
