"""The model scheduler with a fake loader: loads once, expires on a timer, evicts only idle models, retries a
failed load, recovers, and never exceeds the budget."""

from __future__ import annotations

import math
import threading
import time

import pytest

from aipc_chat.engines.scheduler import ModelSpec, Scheduler
from aipc_chat.errors import Busy, EngineFailure, MemoryFull, NotReady
from tests.waiting import wait_until


class FakeLoader:
    """Models whose loads add their size to a fake RSS, and that record what was resident at each load."""

    def __init__(self) -> None:
        self.rss = 100.0
        self.loads: dict[str, int] = {}
        self.resident: dict[str, float] = {}
        self.peaks: list[float] = []  # what the models held right after each load
        self.gates: dict[str, threading.Event] = {}
        self.failures: dict[str, int] = {}  # loads still to fail, per model
        self.lock = threading.Lock()

    def spec(self, name: str, size: float, keep_alive: float = math.inf, estimate: float | None = None) -> ModelSpec:
        def load() -> object:
            gate = self.gates.get(name)
            if gate is not None:
                gate.wait(10)
            with self.lock:
                self.loads[name] = self.loads.get(name, 0) + 1
                if self.failures.get(name, 0) > 0:
                    self.failures[name] -= 1
                    raise RuntimeError(f"{name} would not compile")
                self.rss += size
                self.resident[name] = size
                self.peaks.append(sum(self.resident.values()))
            return f"{name}-pipeline-{self.loads[name]}"

        def unload(handle: object) -> None:
            with self.lock:
                self.rss -= self.resident.pop(name)

        return ModelSpec(name, load, unload, estimate_mb=size if estimate is None else estimate,
                         keep_alive=keep_alive)

    def measure(self) -> float:
        return self.rss


@pytest.fixture
def fake() -> FakeLoader:
    return FakeLoader()


def scheduler(fake: FakeLoader, limit: float | None = None, **kwargs: object) -> Scheduler:
    s = Scheduler(limit, measure=fake.measure, sleep=lambda _: None, **kwargs)  # type: ignore[arg-type]
    s.start()
    return s


def watch(s: Scheduler) -> dict[tuple[str, str], threading.Event]:
    """An event per (model, state) the scheduler enters."""
    events: dict[tuple[str, str], threading.Event] = {}
    lock = threading.Lock()

    def seen(name: str, state: str) -> None:
        with lock:
            events.setdefault((name, state), threading.Event()).set()

    def event(key: tuple[str, str]) -> threading.Event:
        with lock:
            return events.setdefault(key, threading.Event())

    s.on_change = seen  # type: ignore[assignment]
    return _Events(event)  # type: ignore[return-value]


class _Events:
    def __init__(self, get):  # type: ignore[no-untyped-def]
        self._get = get

    def __getitem__(self, key: tuple[str, str]) -> threading.Event:
        return self._get(key)  # type: ignore[no-any-return]


def test_concurrent_acquires_load_the_model_once(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    fake.gates["llm"] = threading.Event()
    leases: list[object] = []
    threads = [threading.Thread(target=lambda: leases.append(s.acquire("llm", 10))) for _ in range(8)]
    for t in threads:
        t.start()
    while s.view("llm").waiting < 8:  # all eight wait before the load may finish
        time.sleep(0.01)
    fake.gates["llm"].set()
    for t in threads:
        t.join(10)
    assert fake.loads == {"llm": 1} and len(leases) == 8
    assert s.view("llm").refs == 8 and s.view("llm").state == "ready"
    assert s.view("llm").size_mb == 50
    s.close()


def test_expiry_is_a_timer_set_to_release_plus_keep_alive(fake: FakeLoader) -> None:
    """The thread sleeps until the deadline, not in polling steps: the unload comes no earlier than the keep-alive
    and the thread wakes only for the release and the deadline."""
    s = scheduler(fake)
    events = watch(s)
    s.add(fake.spec("llm", 50, keep_alive=0.3))
    lease = s.acquire("llm", 10)
    wakeups = s.wakeups
    released = time.monotonic()
    s.release(lease)
    assert events["llm", "unloaded"].wait(10)
    assert time.monotonic() - released >= 0.3
    assert s.wakeups - wakeups <= 3
    assert s.view("llm").state == "unloaded" and fake.resident == {}
    s.close()


def test_the_timer_sleeps_exactly_until_the_deadline(fake: FakeLoader) -> None:
    """With a clock the test drives, the wait the thread asks for is what is left of the keep-alive."""
    now = [1000.0]
    s = Scheduler(None, measure=fake.measure, clock=lambda: now[0])
    s.add(fake.spec("llm", 50, keep_alive=120.0))
    s.add(fake.spec("image", 20, keep_alive=30.0))
    for name in ("llm", "image"):
        s._load(s._records[name])
    lease = s.acquire("llm")
    assert s._next_deadline() == pytest.approx(30.0)  # the image model, loaded idle at t=1000
    now[0] = 1010.0
    s.release(lease)  # the LLM's keep-alive starts now: 1130
    assert s._next_deadline() == pytest.approx(20.0)
    now[0] = 1030.0
    work = s._next_work()
    assert work is not None
    work()
    assert s.view("image").state == "unloaded"
    assert s._next_deadline() == pytest.approx(100.0)


def test_a_request_keep_alive_overrides_the_default_and_zero_unloads_at_once(fake: FakeLoader) -> None:
    s = scheduler(fake)
    events = watch(s)
    s.add(fake.spec("llm", 50, keep_alive=math.inf))
    s.release(s.acquire("llm", 10))
    assert s.view("llm").state == "ready" and s.view("llm").expires_in is None  # forever
    s.release(s.acquire("llm", 10), keep_alive=0)
    assert events["llm", "unloaded"].wait(10)
    s.close()


def test_idle_models_are_evicted_to_make_room_in_use_ones_never(fake: FakeLoader) -> None:
    s = scheduler(fake, limit=100)
    s.add(fake.spec("llm", 60))
    s.add(fake.spec("image", 60))
    llm = s.acquire("llm", 10)
    with pytest.raises(MemoryFull, match="in use"):  # the LLM is held: the image waits, then gives up
        s.acquire("image", 0.3)
    assert s.view("llm").state == "ready" and fake.loads == {"llm": 1}
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(s.acquire("image", 10)))
    waiter.start()
    while s.view("image").waiting < 1:
        time.sleep(0.01)
    s.release(llm)  # idle now: evicted for the image model
    waiter.join(10)
    assert got and s.view("image").state == "ready" and s.view("llm").state == "unloaded"
    assert max(fake.peaks) <= 100
    s.close()


def test_least_recently_used_idle_model_goes_first(fake: FakeLoader) -> None:
    s = scheduler(fake, limit=100)
    for name in ("a", "b", "c"):
        s.add(fake.spec(name, 40))
    s.release(s.acquire("a", 10))
    s.release(s.acquire("b", 10))
    s.release(s.acquire("a", 10))  # b is now the least recently used
    s.release(s.acquire("c", 10))
    assert s.view("b").state == "unloaded" and s.view("a").state == "ready" and s.view("c").state == "ready"
    assert max(fake.peaks) <= 100
    s.close()


def test_a_model_bigger_than_the_limit_is_refused_at_once(fake: FakeLoader) -> None:
    s = scheduler(fake, limit=100)
    s.add(fake.spec("big", 150))
    with pytest.raises(MemoryFull, match="more than AIPC_MEMORY_LIMIT") as refused:
        s.acquire("big", 10)
    assert refused.value.retry_after is None and fake.loads == {}
    s.close()


def test_a_failed_load_is_a_clear_state_and_the_next_acquire_retries(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    fake.failures["llm"] = 1
    with pytest.raises(EngineFailure, match="could not be loaded"):
        s.acquire("llm", 10)
    view = s.view("llm")
    assert view.state == "failed" and "would not compile" in (view.error or "") and not view.broken
    s.acquire("llm", 10)
    assert fake.loads == {"llm": 2} and s.view("llm").state == "ready" and s.view("llm").error is None
    s.close()


def test_recovery_rebuilds_and_three_failed_rebuilds_break_the_model(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    s.release(s.acquire("llm", 10))
    assert s.recover("llm", RuntimeError("step failed")).wait() is True
    assert s.view("llm").state == "ready" and s.view("llm").restarts == 1 and fake.loads["llm"] == 2
    fake.failures["llm"] = 3
    assert s.recover("llm", RuntimeError("step failed again")).wait() is False
    view = s.view("llm")
    assert view.state == "failed" and view.broken and "3 rebuilds" in (view.error or "")
    with pytest.raises(NotReady, match="restart the server"):
        s.acquire("llm", 10)
    s.close()


def test_requests_during_recovery_get_a_503_with_retry_after(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    s.release(s.acquire("llm", 10))
    fake.gates["llm"] = threading.Event()
    recovering = threading.Thread(target=lambda: s.recover("llm", RuntimeError("boom")).wait())
    recovering.start()
    while s.view("llm").state != "recovering":
        time.sleep(0.01)
    with pytest.raises(NotReady, match="recovering") as refused:
        s.acquire("llm", 10)
    assert refused.value.retry_after
    fake.gates["llm"].set()
    recovering.join(10)
    assert s.view("llm").state == "ready"
    s.close()


def test_the_wait_queue_is_bounded(fake: FakeLoader) -> None:
    s = scheduler(fake, max_waiting=2)
    s.add(fake.spec("llm", 50))
    fake.gates["llm"] = threading.Event()
    threads = [threading.Thread(target=s.acquire, args=("llm", 10)) for _ in range(2)]
    for t in threads:
        t.start()
    while s.view("llm").waiting < 2:
        time.sleep(0.01)
    with pytest.raises(Busy):
        s.acquire("llm", 10)
    fake.gates["llm"].set()
    for t in threads:
        t.join(10)
    s.close()


def test_preload_loads_without_holding_and_unload_waits_until_it_is_gone(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    s.preload("llm", keep_alive=math.inf)
    view = s.view("llm")
    assert view.state == "ready" and view.refs == 0 and fake.loads == {"llm": 1}
    assert s.unload("llm", timeout=10) is True
    assert s.view("llm").state == "unloaded" and fake.resident == {}


def test_unload_asked_while_held_happens_at_release(fake: FakeLoader) -> None:
    s = scheduler(fake)
    events = watch(s)
    s.add(fake.spec("llm", 50))
    lease = s.acquire("llm", 10)
    assert s.unload("llm", wait=False) is False
    assert s.view("llm").state == "ready"  # held: not taken away
    s.release(lease)
    assert events["llm", "unloaded"].wait(10)
    s.close()


def test_two_models_loaded_at_once_report_sizes_that_add_up(fake: FakeLoader) -> None:
    """Loads run one at a time on the scheduler's thread, so each one's RSS growth is its own."""
    s = scheduler(fake)
    s.add(fake.spec("llm", 70, estimate=1))
    s.add(fake.spec("image", 30, estimate=1))
    before = fake.rss
    threads = [threading.Thread(target=s.acquire, args=(name, 10)) for name in ("llm", "image")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    snap = s.snapshot()
    assert snap.models["llm"].size_mb == 70 and snap.models["image"].size_mb == 30
    assert sum(m.size_mb or 0 for m in snap.models.values()) == fake.rss - before
    s.close()


def test_a_load_blocked_by_models_in_use_fails_after_the_memory_wait(fake: FakeLoader) -> None:
    """The waiters hear why (503 with Retry-After) when the wait for room runs out: a timer, not their timeouts."""
    s = scheduler(fake, limit=100, memory_wait=0.2)
    s.add(fake.spec("llm", 60))
    s.add(fake.spec("image", 60))
    llm = s.acquire("llm", 10)
    with pytest.raises(MemoryFull, match="in use") as refused:
        s.acquire("image", 30)
    assert refused.value.retry_after and s.view("image").state == "unloaded" and s.view("image").waiting == 0
    s.release(llm)
    s.release(s.acquire("image", 10))  # room now: the idle LLM is evicted
    assert s.view("llm").state == "unloaded"
    s.close()


def test_an_unload_asked_while_the_model_loads_happens_once_it_has(fake: FakeLoader) -> None:
    s = scheduler(fake)
    events = watch(s)
    s.add(fake.spec("llm", 50))
    fake.gates["llm"] = threading.Event()
    s.preload("llm", wait=False)
    assert events["llm", "loading"].wait(10)
    assert s.unload("llm", wait=False) is False  # loading: asked, not yet done
    fake.gates["llm"].set()
    assert events["llm", "unloaded"].wait(10)
    assert s.view("llm").state == "unloaded" and fake.resident == {}
    s.close()


def test_a_load_requests_wait_for_is_on_demand_and_the_start_load_is_not(fake: FakeLoader) -> None:
    """/ready stays 200 while a request waits for a reload; it is 503 while the start's load runs."""
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    fake.gates["llm"] = threading.Event()
    s.preload("llm", wait=False)  # the start
    while s.view("llm").state != "loading":
        time.sleep(0.01)
    assert not s.view("llm").on_demand
    fake.gates["llm"].set()
    s.unload("llm", timeout=10)
    fake.gates["llm"] = threading.Event()
    waiter = threading.Thread(target=s.acquire, args=("llm", 10))
    waiter.start()
    while s.view("llm").state != "loading":
        time.sleep(0.01)
    assert s.view("llm").on_demand
    fake.gates["llm"].set()
    waiter.join(10)
    s.close()


def test_a_requests_own_keep_alive_zero_does_not_cut_anothers_short(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50, keep_alive=math.inf))
    other = s.acquire("llm", 10)
    s.release(s.acquire("llm", 10), keep_alive=0)
    assert s.unload("llm", if_idle=True) is False  # held by the other: not asked
    s.release(other)
    assert s.view("llm").state == "ready" and s.view("llm").expires_in is None  # the other's keep-alive holds
    s.close()


def test_closing_ends_a_rebuild_wait_and_refuses_new_ones(fake: FakeLoader) -> None:
    s = scheduler(fake)
    s.add(fake.spec("llm", 50))
    s.release(s.acquire("llm", 10))
    fake.gates["llm"] = threading.Event()  # the rebuild hangs in its load
    recovery = s.recover("llm", RuntimeError("boom"))
    while fake.loads.get("llm", 0) < 1 or s.view("llm").state != "recovering":
        time.sleep(0.01)
    s.close(timeout=0.1)
    assert recovery.wait() is False  # the owner thread is not left waiting
    assert s.recover("llm", RuntimeError("again")).wait() is False
    fake.gates["llm"].set()


@pytest.mark.parametrize("keep_alive", [50 * 365 * 86400.0, 1e20, 1e300, threading.TIMEOUT_MAX * 2])
def test_a_keep_alive_too_long_to_wait_for_keeps_the_model_and_the_thread(fake: FakeLoader, keep_alive: float) -> None:
    """Ollama's keep_alive takes any number of seconds: one beyond what a thread can wait (found by the fuzz test:
    OverflowError in Condition.wait) must neither kill the scheduler's thread nor unload the model."""
    s = scheduler(fake)
    s.add(fake.spec("llm", 50, keep_alive=0.1))
    s.add(fake.spec("image", 50, keep_alive=0.1))
    s.release(s.acquire("llm", 10), keep_alive)
    with s._cond:  # a far deadline is waited for in steps of an hour at most; a century and more is never
        assert (s._next_deadline() or 0.0) <= 3600.0
    s.release(s.acquire("image", 10), 0)  # the thread still serves: it unloads this one, and loads it again
    wait_until(lambda: s.view("image").state == "unloaded", "the image model unloaded")
    s.release(s.acquire("image", 10))
    assert s._thread is not None and s._thread.is_alive()
    assert s.view("llm").state == "ready" and fake.loads == {"llm": 1, "image": 2}
    s.close()
