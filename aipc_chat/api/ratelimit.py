"""Per-user token buckets for POST /chat: a person or a desktop app chatting never notices; a runaway loop does."""

from __future__ import annotations

import math
import threading
import time

from aipc_chat.errors import Busy


class RateLimiter:
    """``rate`` turns a minute per key, bursts up to ``burst``."""

    shared = False  # held in this process (team.SharedRateLimiter keeps them in the shared database)

    def __init__(self, per_minute: int, burst: int | None = None, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, per_minute // 3))
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise Busy (429) with the seconds until the next one."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1 - tokens) / self.rate)
                raise Busy(f"Too many chat turns for this user; retry in {wait} s.", retry_after=wait, status=429)
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > self.max_keys:  # forget the stalest users (bounded memory)
                for old in sorted(self._buckets, key=lambda k: self._buckets[k][1])[: self.max_keys // 10]:
                    del self._buckets[old]
