"""The owner thread's channel, read on an event loop, keeps order: items, then the error or end after them."""

from __future__ import annotations

import asyncio

import pytest

from aipc_chat.engines.stream import Channel
from aipc_chat.errors import Cancelled
from aipc_chat.serving.aio import Reader


def test_error_after_items_is_raised_after_them() -> None:
    async def main() -> list[list[int] | None]:
        ch: Channel[int] = Channel()
        reader = Reader(ch)
        for i in range(3):
            ch.put(i)
        ch.put(Cancelled("stop"))
        ch.close()
        await asyncio.sleep(0)
        first = await reader.get_batch()
        with pytest.raises(Cancelled):
            await reader.get_batch()
        return [first, await reader.get_batch(), await reader.get_batch()]

    assert asyncio.run(main()) == [[0, 1, 2], None, None]


def test_end_after_items() -> None:
    async def main() -> list[list[int] | None]:
        ch: Channel[int] = Channel()
        reader = Reader(ch)
        ch.put(1)
        ch.close()
        await asyncio.sleep(0)
        return [await reader.get_batch(), await reader.get_batch()]

    assert asyncio.run(main()) == [[1], None]


def _owner_puts(ch: Channel[int], values: list[int], wait: float, log: list[str]) -> None:
    """An owner thread: put each value, then wait (bounded) for the hand-off, like the LLM engine after a step."""
    import time

    for v in values:
        log.append(f"put {v}")
        ch.put(v)
        if ch.owes_handoff:
            taken = ch.wait_handed_off(time.perf_counter() + wait)
            log.append(f"handed off {v}" if taken else f"gave up {v}")
    ch.close()


def test_owner_waits_until_a_waiting_consumer_has_taken_the_item() -> None:
    import threading

    log: list[str] = []

    async def main() -> None:
        ch: Channel[int] = Channel()
        owner = threading.Thread(target=_owner_puts, args=(ch, [1, 2, 3], 5.0, log))
        consumer = asyncio.ensure_future(consume(ch))
        await asyncio.sleep(0.05)  # the consumer parks on the empty queue first
        owner.start()
        await consumer
        owner.join()

    async def consume(ch: Channel[int]) -> None:
        async for v in Reader(ch):
            log.append(f"sent {v}")

    asyncio.run(main())
    # each value is sent by the consumer before the owner goes on to the next one
    assert log == ["put 1", "sent 1", "handed off 1", "put 2", "sent 2", "handed off 2", "put 3", "sent 3",
                   "handed off 3"]


def test_owner_does_not_wait_for_a_consumer_that_is_not_waiting() -> None:
    import time

    async def main() -> tuple[bool, float]:
        ch: Channel[int] = Channel()
        reader = Reader(ch)
        ch.put(1)  # nobody is parked: nothing is owed
        owed_unparked = ch.owes_handoff
        getter = asyncio.ensure_future(reader.get_batch())
        await asyncio.sleep(0.01)
        assert await getter == [1]
        parked = asyncio.ensure_future(reader.get_batch())
        await asyncio.sleep(0.01)  # now it waits on an empty queue
        ch.put(2)
        assert ch.owes_handoff
        t0 = time.perf_counter()
        # a consumer that never comes back (a client not reading): the owner gives up at the deadline
        taken = await asyncio.to_thread(ch.wait_handed_off, time.perf_counter() + 0.05)
        waited = time.perf_counter() - t0
        assert not taken and not ch.owes_handoff
        assert await parked == [2]
        return owed_unparked, waited

    owed_unparked, waited = asyncio.run(main())
    assert owed_unparked is False
    assert waited > 0.04  # it did wait for the deadline (how much longer a busy machine took is not checked)


def test_a_silent_stream_times_out_and_its_work_is_cancelled() -> None:
    import time

    from aipc_chat.errors import RequestTimeout
    from aipc_chat.serving.aio import batches

    async def main() -> tuple[list[list[int]], Channel[int], float]:
        ch: Channel[int] = Channel()
        ch.put(1)  # what arrived before the deadline is delivered first
        got: list[list[int]] = []

        async def consume() -> None:
            async for batch in batches(ch, 0.2):
                got.append(batch)

        t0 = time.perf_counter()
        with pytest.raises(RequestTimeout, match="longer than 0.2 s"):
            await consume()
        return got, ch, time.perf_counter() - t0

    got, ch, waited = asyncio.run(main())
    assert got == [[1]]
    assert ch.cancelled  # the owner thread stops the work
    assert waited > 0.15  # not before the deadline


def test_a_finished_stream_leaves_no_timer_behind() -> None:
    from aipc_chat.serving.aio import batches

    async def main() -> list[list[int]]:
        ch: Channel[int] = Channel()
        ch.put(1)
        ch.put(2)
        ch.close()
        out = [b async for b in batches(ch, 0.1)]
        await asyncio.sleep(0.2)  # past the deadline: nothing is raised or queued any more
        assert ch.take() == []
        return out

    assert asyncio.run(main()) == [[1, 2]]


def test_a_stream_that_never_started_times_out_as_503_with_retry_after() -> None:
    from aipc_chat.errors import NotReady
    from aipc_chat.serving.aio import batches

    async def main() -> Channel[int]:
        ch: Channel[int] = Channel()  # nothing ever arrives: a long load

        async def consume() -> None:
            async for _ in batches(ch, 0.1):
                pass

        with pytest.raises(NotReady, match="did not start within 0.1 s") as refused:
            await consume()
        assert refused.value.retry_after and refused.value.status == 503
        return ch

    assert asyncio.run(main()).cancelled
