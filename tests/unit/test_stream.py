"""The owner-thread-to-asyncio channel keeps order: items, then the error or the end that follows them."""

from __future__ import annotations

import asyncio

import pytest

from aipc_chat.engines.stream import ThreadToAsync
from aipc_chat.errors import Cancelled


def test_error_after_items_is_raised_after_them() -> None:
    async def main() -> list[list[int] | None]:
        ch: ThreadToAsync[int] = ThreadToAsync(asyncio.get_running_loop())
        for i in range(3):
            ch.put(i)
        ch.put(Cancelled("stop"))
        ch.close()
        await asyncio.sleep(0)
        first = await ch.get_batch()
        with pytest.raises(Cancelled):
            await ch.get_batch()
        return [first, await ch.get_batch(), await ch.get_batch()]

    assert asyncio.run(main()) == [[0, 1, 2], None, None]


def test_end_after_items() -> None:
    async def main() -> list[list[int] | None]:
        ch: ThreadToAsync[int] = ThreadToAsync(asyncio.get_running_loop())
        ch.put(1)
        ch.close()
        await asyncio.sleep(0)
        return [await ch.get_batch(), await ch.get_batch()]

    assert asyncio.run(main()) == [[1], None]
