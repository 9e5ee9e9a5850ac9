"""Waiting in tests for something another thread or process does, without timing it.

A test waits for a state it can observe (an engine's health, a job's step, a server's /ready) by polling it; it
never asserts how long that took (speed belongs to the benchmarks in ``scripts/``). The only limit is a guard
against a hang, far above anything a loaded 2-core machine needs, which fails with what was last seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HANG = 240.0  # seconds: a guard against a hang only, never a speed check (pytest-timeout is 300 per test)
POLL = 0.02


def wait_until(condition: Callable[[], T], what: str = "the condition", *, poll: float = POLL) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail only on a hang."""
    deadline = time.monotonic() + HANG
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: never happened (last seen: {value!r})")
        time.sleep(poll)
    return value


async def async_wait_until(condition: Callable[[], T], what: str = "the condition", *, poll: float = POLL) -> T:
    """``wait_until`` for a coroutine: yields to the event loop between polls."""
    deadline = time.monotonic() + HANG
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: never happened (last seen: {value!r})")
        await asyncio.sleep(poll)
    return value
