"""Requests on their way to the LLM: the HTTP layer announces them, ``submit`` settles them.

The LLM owner thread, woken from idle by one request, waits (for at most ``batch_window_ms``) only while others are
still on their way, so requests sent together share their first step and a lone request pays no wait at all.
The route takes an ``Arrival`` when the request comes in and passes it to ``submit`` explicitly.
"""

from __future__ import annotations

import threading


class Arrival:
    """One request that may still submit to the LLM; ``settle()`` (idempotent) once it has, or never will."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals = arrivals
        self._settled = False

    def settle(self) -> None:
        """No longer on its way: submitted, refused, or done."""
        with self._arrivals.lock:
            if not self._settled:
                self._settled = True
                self._arrivals.count -= 1


class Arrivals:
    """How many requests the HTTP layer has begun handling that have not yet submitted to the LLM."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def arrive(self) -> Arrival:
        """Announce a request; settle the returned handle when it submits or ends."""
        with self.lock:
            self.count += 1
        return Arrival(self)
