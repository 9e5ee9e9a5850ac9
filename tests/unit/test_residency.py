"""The memory budget's choices (fake slots) and the parsing of sizes and keep-alive values."""

from __future__ import annotations

import math
import threading
import time

import pytest
from pydantic import BaseModel

from aipc_chat.api.schemas.common import KeepAlive
from aipc_chat.engines.residency import Keeper, Residency, Slot
from aipc_chat.errors import MemoryFull
from aipc_chat.settings import Settings, parse_bytes


class Owner:
    """Stands in for an owner thread: unloads its slot when the keeper says it is due."""

    def __init__(self, residency: Residency, slot: Slot) -> None:
        self.residency, self.slot, self.unloads = residency, slot, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            if self.slot.keeper.due() and self.slot.loaded:
                self.residency.unload(self.slot, self._let_go)

    def _let_go(self) -> None:
        self.unloads += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def resident(residency: Residency, kind: str, mb: float, *, idle: bool = True) -> Slot:
    slot = residency.add(Slot(kind, mb, keeper=Keeper(None), idle=lambda: idle))
    with residency.loading(slot):
        pass
    slot.resident_mb = mb  # as if measured
    return slot


def test_a_load_that_does_not_fit_unloads_the_least_recently_used_idle_model() -> None:
    residency = Residency(1000 * 2**20)
    old, recent = resident(residency, "old", 400), resident(residency, "recent", 400)
    residency.used(recent)
    owners = [Owner(residency, old), Owner(residency, recent)]
    try:
        new = residency.add(Slot("new", 500, keeper=Keeper(None)))
        with residency.loading(new):
            pass
        assert not old.loaded and recent.loaded and new.loaded
        assert owners[0].unloads == 1 and owners[1].unloads == 0
    finally:
        for owner in owners:
            owner.stop()


def test_a_busy_model_is_not_unloaded_and_the_load_is_refused_with_retry_after() -> None:
    residency = Residency(1000 * 2**20)
    busy = resident(residency, "busy", 800, idle=False)
    new = residency.add(Slot("new", 500, keeper=Keeper(None)))
    with pytest.raises(MemoryFull, match="in use") as refused, residency.loading(new):
        pass
    assert refused.value.retry_after and busy.loaded and not new.loaded


def test_a_model_bigger_than_the_limit_never_fits() -> None:
    residency = Residency(100 * 2**20)
    big = residency.add(Slot("big", 90, headroom_mb=20))
    assert not residency.fits(big)
    with pytest.raises(MemoryFull, match="more than AIPC_MEMORY_LIMIT") as refused, residency.loading(big):
        pass
    assert refused.value.retry_after is None


def test_without_a_limit_everything_loads() -> None:
    residency = Residency()
    slots = [resident(residency, str(i), 10_000) for i in range(3)]
    assert all(s.loaded for s in slots) and residency.counted_mb() == 30_000


def test_the_keeper_follows_the_last_request() -> None:
    keeper = Keeper(None)
    assert not keeper.due() and keeper.expires_in == math.inf
    keeper.finished(0.0)
    assert keeper.due()
    keeper.finished(None)  # back to the default (never)
    assert not keeper.due()
    keeper.finished(0.05)
    time.sleep(0.06)
    assert keeper.due()
    keeper.busy()
    assert not keeper.due()


def test_an_ask_expires_unanswered() -> None:
    keeper = Keeper(None)
    event = keeper.ask(0.05)
    assert keeper.due()
    time.sleep(0.06)
    assert not keeper.due() and not event.is_set()
    event = keeper.ask(10)
    keeper.unloaded()
    assert event.is_set() and not keeper.due()


@pytest.mark.parametrize(("text", "size"), [("8GB", 8 * 10**9), ("8GiB", 8 * 2**30), ("800MB", 800 * 10**6),
                                            ("1.5gb", 1_500_000_000), ("512 MiB", 512 * 2**20), ("1000", 1000)])
def test_sizes(text: str, size: int) -> None:
    assert parse_bytes(text) == size
    assert Settings(memory_limit=text).memory_limit_bytes == size


@pytest.mark.parametrize("text", ["8 GB of RAM", "lots", "-1GB", "8XB"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="memory_limit|size"):
        Settings(memory_limit=text)


class Body(BaseModel):
    keep_alive: KeepAlive = None


@pytest.mark.parametrize(("value", "seconds"), [(None, None), (0, 0.0), (30, 30.0), ("5m", 300.0), ("1h", 3600.0),
                                                (-1, math.inf), ("-1", math.inf), ("-5m", math.inf)])
def test_keep_alive_values(value: object, seconds: float | None) -> None:
    assert Body(keep_alive=value).keep_alive == seconds


@pytest.mark.parametrize("value", ["soon", True, [5], "nan"])
def test_bad_keep_alive_values(value: object) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        Body(keep_alive=value)
