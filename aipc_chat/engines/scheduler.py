"""The one owner of model lifecycle, in the spirit of Ollama's ``server/sched.go``.

Each local model has one ``Record``: its state, its handle (the pipeline), the size measured at its load, how many
requests hold it, and when it expires. One thread, the scheduler's, does every load, unload, expiry, eviction and
recovery; requests only ``acquire`` a model (which loads it if needed, waiting in a bounded queue) and ``release`` it
(keep-alive starts then). Loads run one at a time on that thread, so each one's RSS growth is its own cost and the
sizes of two models loaded "at once" add up to what they cost. Expiry is a timer (the thread sleeps until the next
deadline or until it is woken), never a poll. With a memory limit a load first evicts idle models, least recently
used first, and never one in use; a load that cannot fit waits for a release (or fails at once when the model alone
is bigger than the limit). ``/ready``, ``/api/ps``, ``/metrics`` and the page read ``snapshot()``.

States of a record:

    unloaded    not resident; the next acquire loads it
    loading     being built (requests wait)
    ready       resident and serving
    unloading   being let go (an acquire waits, then loads it again)
    recovering  its pipeline failed under a request and is being rebuilt (new requests get 503 with Retry-After)
    failed      its last load failed (``error`` says why); the next acquire tries again, unless ``broken`` (three
                rebuilds in a row failed: a restart of the process is needed)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aipc_chat.engines.contract import RETRY_AFTER_SECONDS, EngineHealth
from aipc_chat.engines.memory import release_memory, rss_mb
from aipc_chat.errors import AipcError, Busy, Cancelled, EngineFailure, MemoryFull, NotReady
from aipc_chat.settings import KEEP_FOREVER_SECONDS

log = logging.getLogger(__name__)

RecordState = Literal["unloaded", "loading", "ready", "unloading", "recovering", "failed"]
MEMORY_RETRY_AFTER = 10
MAX_REBUILDS = 3
REBUILD_BACKOFF_SECONDS = (0.0, 0.5, 2.0)  # before each attempt of one recovery
LONGEST_WAIT = 3600.0  # seconds: the thread wakes at least this often (a far deadline is waited for in steps;
# Condition.wait overflows beyond threading.TIMEOUT_MAX, and a keep_alive may be any number of seconds)


def _expiry(since: float, keep: float) -> float | None:
    """When an idle model kept ``keep`` seconds from ``since`` is let go; None for never (a century and more)."""
    return None if keep >= KEEP_FOREVER_SECONDS else since + max(0.0, keep)


def weights_mb(model_dir: Path) -> float:
    """A model's weights on disk in MiB (a GGUF file, or the ``.bin`` files of an IR folder and its subfolders):
    what loading it is expected to take before it has been measured."""
    files = [model_dir] if model_dir.is_file() else list(model_dir.rglob("*.bin"))
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)


@dataclass(frozen=True)
class ModelSpec:
    """How the scheduler loads and lets go of one model (the engine that serves it provides both)."""

    name: str
    load: Callable[[], Any]  # builds the pipeline and installs it in its engine; returns it (the handle)
    unload: Callable[[Any], None]  # takes it out of its engine; the scheduler then gives the memory back
    estimate_mb: float = 0.0  # what a load is expected to take before one has been measured
    headroom_mb: float = 0.0  # what it may still grow by once loaded (an LLM's KV cache)
    keep_alive: float = math.inf  # seconds an idle model stays loaded by default


@dataclass
class Record:
    """One model's state (read and written under the scheduler's lock)."""

    spec: ModelSpec
    state: RecordState = "unloaded"
    handle: Any = None
    size_mb: float | None = None  # RSS growth at its last load
    refs: int = 0  # requests holding it now
    expires_at: float | None = None  # monotonic; None while held or never
    last_used: float = field(default_factory=time.monotonic)
    error: str | None = None
    broken: bool = False  # recovery failed for good
    load_seconds: float | None = None
    restarts: int = 0  # successful rebuilds after a failure
    on_demand: bool = False  # this load was asked for by a request (it waits), not by the start
    waiters: deque[Waiter] = field(default_factory=deque)
    preload_keep: float | None = None  # a load-only request is pending, with this keep-alive
    unload_asked: bool = False  # unload as soon as it is idle (keep_alive 0 with no prompt, or a budget eviction)
    blocked: str | None = None  # why the pending load waits (no room under the limit while others are in use)
    blocked_until: float | None = None  # when its waiters stop waiting for room and hear why (MemoryFull)
    recovery: Recovery | None = None

    @property
    def cost_mb(self) -> float:
        """What the budget counts for this model: its measured size (its estimate until measured), plus headroom."""
        return (self.size_mb if self.size_mb is not None else self.spec.estimate_mb) + self.spec.headroom_mb

    @property
    def resident(self) -> bool:
        """Holds memory now."""
        return self.state in ("ready", "unloading", "recovering")


@dataclass
class Waiter:
    """One acquire waiting for a load."""

    done: threading.Event = field(default_factory=threading.Event)
    lease: Lease | None = None
    error: AipcError | None = None


@dataclass(eq=False)
class Recovery:
    """An owner thread's request to rebuild a failed pipeline; ``wait()`` for the outcome."""

    cause: str
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False

    def wait(self) -> bool:
        """Block until the rebuild ends; False when the model is broken for good."""
        self.done.wait()
        return self.ok


@dataclass(frozen=True)
class Lease:
    """A model held by one request: pass it back to ``release``. (Not the pipeline itself: a lease must not keep a
    pipeline that is being replaced alive.)"""

    name: str


@dataclass(frozen=True)
class ModelView:
    """A record as ``snapshot`` shows it."""

    state: RecordState
    size_mb: float | None
    cost_mb: float
    refs: int
    expires_in: float | None  # seconds until an idle unload; None while held, unloaded, or never
    error: str | None
    broken: bool
    load_seconds: float | None
    restarts: int
    on_demand: bool
    keep_alive: float
    waiting: int


@dataclass(frozen=True)
class Snapshot:
    """Every model and the memory budget, read at one instant."""

    models: dict[str, ModelView]
    limit_mb: float | None

    @property
    def counted_mb(self) -> float:
        """What the resident models count against the budget."""
        return round(sum(m.cost_mb for m in self.models.values() if m.size_mb is not None), 1)  # None: not resident


class Scheduler:
    """Loads, unloads, expires, evicts and recovers the local models of one process (thread-safe)."""

    def __init__(self, limit_mb: float | None = None, *, max_waiting: int = 64, memory_wait: float = 10.0,
                 measure: Callable[[], float] = rss_mb, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.limit_mb = limit_mb
        self.wakeups = 0  # times the thread woke (a timer, not a poll: tests count them)
        self.max_waiting = max_waiting
        self.memory_wait = memory_wait  # how long a load waits for models in use to be released before a 503
        self._measure, self._clock, self._sleep = measure, clock, sleep
        self._records: dict[str, Record] = {}
        self._recoveries: set[Recovery] = set()  # asked for and not yet over
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.on_change: Callable[[str, RecordState], None] | None = None  # a test's or the log's observer

    # --- the callers' side (any thread) --------------------------------------------------------------------------

    def add(self, spec: ModelSpec) -> None:
        """Register a model (not loaded until asked)."""
        with self._cond:
            self._records[spec.name] = Record(spec)

    def start(self) -> None:
        """Start the scheduler thread."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="model-scheduler", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread; whoever waits hears the server is shutting down, an owner thread waiting on a rebuild
        hears it failed (loaded models are left to the process's end). A load under way (compiling can take
        minutes) is waited for ``timeout`` seconds at most: the thread is a daemon."""
        with self._cond:
            self._closed = True
            for record in self._records.values():
                self._fail_waiters(record, Cancelled("The server is shutting down."))
                record.recovery = None
            for recovery in self._recoveries:  # asked for, or under way: the owner threads stop waiting
                recovery.done.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def acquire(self, name: str, timeout: float | None = None) -> Lease:
        """Hold the model, loading it first if need be (blocking). NotReady while it recovers or after it broke,
        Busy when too many wait, MemoryFull when it cannot fit, the load's error when it fails."""
        with self._cond:
            record = self._records[name]
            self._check(record)
            if record.state == "ready":
                record.unload_asked = False  # a new request keeps it (its own keep-alive holds from its release)
                return self._hold(record)
            if len(record.waiters) >= self.max_waiting:
                raise Busy(f"{len(record.waiters)} requests already wait for the {name} model to load; retry "
                           "shortly.", retry_after=RETRY_AFTER_SECONDS)
            waiter = Waiter()
            record.waiters.append(waiter)
            self._cond.notify_all()
        if not waiter.done.wait(timeout):
            with self._cond:
                if not waiter.done.is_set():
                    record.waiters.remove(waiter)
                    blocked = record.blocked
                    if blocked:
                        raise MemoryFull(blocked, retry_after=MEMORY_RETRY_AFTER)
                    raise NotReady(f"The {name} model did not load within {timeout:g} s; retry shortly.",
                                   retry_after=RETRY_AFTER_SECONDS)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.lease is not None
        return waiter.lease

    def release(self, lease: Lease, keep_alive: float | None = None) -> None:
        """A request is done with the model; when none holds it, its keep-alive (this request's, else the
        model's default; ``math.inf``: never, 0: now) starts."""
        with self._cond:
            record = self._records[lease.name]
            record.refs = max(0, record.refs - 1)
            record.last_used = self._clock()
            if record.refs == 0:
                keep = record.spec.keep_alive if keep_alive is None else keep_alive
                record.expires_at = _expiry(record.last_used, keep)
                self._cond.notify_all()

    def preload(self, name: str, keep_alive: float | None = None, *, wait: bool = True,
                timeout: float | None = None) -> None:
        """Load the model without using it (Ollama's request with no prompt, the start); its keep-alive starts
        once it is loaded. With ``wait``, block until then and raise what stopped it."""
        if wait:
            self.release(self.acquire(name, timeout), keep_alive)
            return
        with self._cond:
            record = self._records[name]
            self._check(record)
            if record.state != "ready":
                record.preload_keep = record.spec.keep_alive if keep_alive is None else keep_alive
                self._cond.notify_all()

    def unload(self, name: str, *, wait: bool = True, timeout: float | None = None, if_idle: bool = False) -> bool:
        """Let the model go as soon as no request holds it (Ollama's ``keep_alive: 0`` with no prompt). With
        ``wait``, block until it is unloaded, unless a request holds it (then it goes when that one is done, and
        this does not wait for it); ``if_idle``: only if no request holds it now (a request's own ``keep_alive 0``
        must not cut another's keep-alive short). True when it is not resident."""
        with self._cond:
            record = self._records[name]
            if record.state in ("unloaded", "failed"):
                return True
            if if_idle and record.refs:
                return False
            record.unload_asked = True
            self._cond.notify_all()
            if not wait or record.refs:
                return False
            self._cond.wait_for(lambda: record.state in ("unloaded", "failed") or not record.unload_asked
                                or self._closed, timeout)
            return record.state in ("unloaded", "failed")

    def recover(self, name: str, cause: BaseException) -> Recovery:
        """The model's pipeline failed under a request: it is ``recovering`` from now (new requests get 503), and
        the scheduler thread rebuilds it. The owner thread fails the work in flight, then waits on the result."""
        recovery = Recovery(f"{type(cause).__name__}: {_first_line(cause)}")
        with self._cond:
            if self._closed:  # shutting down: nothing is rebuilt
                recovery.done.set()
                return recovery
            record = self._records[name]
            record.recovery = recovery
            self._recoveries.add(recovery)
            self._set(record, "recovering", error=recovery.cause)
            self._cond.notify_all()
        log.warning("the %s pipeline failed (%s); rebuilding it", name, recovery.cause)
        return recovery

    def check(self, name: str) -> None:
        """Raise the 503 a new request gets when the model cannot take work now (cheap; no load)."""
        with self._cond:
            self._check(self._records[name])

    def snapshot(self) -> Snapshot:
        """Every record and the budget at one instant."""
        now = self._clock()
        with self._cond:
            return Snapshot({name: self._view(r, now) for name, r in self._records.items()}, self.limit_mb)

    def view(self, name: str) -> ModelView:
        """One record at this instant."""
        with self._cond:
            return self._view(self._records[name], self._clock())

    # --- under the lock ------------------------------------------------------------------------------------------

    def _view(self, r: Record, now: float) -> ModelView:
        expires = None if r.expires_at is None or r.state != "ready" else max(0.0, r.expires_at - now)
        return ModelView(r.state, r.size_mb if r.resident else None, round(r.cost_mb, 1), r.refs, expires, r.error,
                         r.broken, r.load_seconds, r.restarts, r.on_demand, r.spec.keep_alive, len(r.waiters))

    def _check(self, record: Record) -> None:
        name = record.spec.name
        if self._closed:
            raise Cancelled("The server is shutting down.")
        if record.broken:
            raise NotReady(f"The {name} engine has failed ({record.error}); restart the server.")
        if record.state == "recovering":
            raise NotReady(f"The {name} engine is recovering from an internal error; retry shortly.",
                           retry_after=RETRY_AFTER_SECONDS)
        if self.limit_mb is not None and record.cost_mb > self.limit_mb:
            raise _too_big(record, self.limit_mb)

    def _hold(self, record: Record) -> Lease:
        record.refs += 1
        record.expires_at = None
        record.last_used = self._clock()
        return Lease(record.spec.name)

    def _set(self, record: Record, state: RecordState, *, error: str | None = None) -> None:
        record.state, record.error = state, error
        if self.on_change is not None:
            self.on_change(record.spec.name, state)

    def _fail_waiters(self, record: Record, error: AipcError) -> None:
        while record.waiters:
            waiter = record.waiters.popleft()
            waiter.error = error
            waiter.done.set()

    def _resident_cost(self, but: Record) -> float:
        return sum(r.cost_mb for r in self._records.values() if r is not but and r.resident)

    # --- the scheduler thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                with self._cond:
                    if self._closed:
                        return
                    work = self._next_work()
                    if work is None:
                        self._cond.wait(self._next_deadline())
                        self.wakeups += 1
                        continue
                work()
            except Exception:  # a bug of ours: the scheduler must go on serving the other models
                log.exception("the model scheduler's work failed")
                with self._cond:  # not a busy loop, should the same failure come back at once (close wakes it)
                    if not self._closed:
                        self._cond.wait(1.0)

    def _next_work(self) -> Callable[[], None] | None:
        """What to do now, most urgent first (under the lock): a recovery, an unload that is due, a load."""
        records = list(self._records.values())
        for r in records:
            if r.recovery is not None:
                return lambda r=r: self._recover(r)  # type: ignore[misc]
        now = self._clock()
        for r in records:
            if r.state == "ready" and r.refs == 0 and not r.waiters and (
                    r.unload_asked or (r.expires_at is not None and r.expires_at <= now)):
                return lambda r=r: self._unload(r, "asked" if r.unload_asked else "idle")  # type: ignore[misc]
        for r in records:
            if not r.waiters and r.preload_keep is None:
                r.blocked = r.blocked_until = None  # nobody waits for it (any more)
            elif r.state == "ready":  # it became ready while these waited
                self._hand_out(r)
            elif r.state in ("unloaded", "failed") and not r.broken:
                work = self._load_work(r, now)
                if work is not None:
                    return work
        return None

    def _load_work(self, record: Record, now: float) -> Callable[[], None] | None:
        """For a model that is wanted: evict an idle one to make room, or load it, or (no room while others are
        in use) nothing until a release, or until its wait for room runs out."""
        victim = self._make_room(record)
        if victim is not None:
            return lambda: self._unload(victim, "to make room")
        if record.blocked is None:
            return lambda: self._load(record)
        if record.blocked_until is not None and record.blocked_until <= now:
            self._fail_waiters(record, MemoryFull(record.blocked, retry_after=MEMORY_RETRY_AFTER))
            record.preload_keep = record.blocked = record.blocked_until = None
        return None

    def _hand_out(self, record: Record) -> None:
        """The model is ready: every waiting acquire holds it now (a new user cancels an unload asked earlier)."""
        if record.waiters:
            record.unload_asked = False
        while record.waiters:
            waiter = record.waiters.popleft()
            waiter.lease = self._hold(record)
            waiter.done.set()

    def _next_deadline(self) -> float | None:
        deadlines = [r.expires_at for r in self._records.values()
                     if r.state == "ready" and r.refs == 0 and r.expires_at is not None]
        deadlines += [r.blocked_until for r in self._records.values() if r.blocked_until is not None]
        return min(LONGEST_WAIT, max(0.0, min(deadlines) - self._clock())) if deadlines else None

    def _make_room(self, record: Record) -> Record | None:
        """Under a limit: the idle model to evict first so ``record`` fits, or None when it fits (or cannot fit
        yet: ``blocked`` says why, and the load waits for a release)."""
        record.blocked = None
        limit = self.limit_mb
        if limit is None or self._resident_cost(record) + record.cost_mb <= limit:
            record.blocked_until = None
            return None
        if record.cost_mb > limit:
            self._fail_waiters(record, _too_big(record, limit))
            record.preload_keep = None
            record.blocked = "too big"
            return None
        idle = sorted((r for r in self._records.values()
                       if r is not record and r.state == "ready" and r.refs == 0 and not r.waiters),
                      key=lambda r: r.last_used)
        if idle:
            log.info("memory limit: unloading the idle %s model to load the %s model", idle[0].spec.name,
                     record.spec.name)
            return idle[0]
        busy = ", ".join(r.spec.name for r in self._records.values() if r is not record and r.resident)
        record.blocked = (f"Loading the {record.spec.name} model (about {record.cost_mb:.0f} MB) would exceed "
                          f"AIPC_MEMORY_LIMIT ({limit:.0f} MB) while the {busy} model is in use; retry shortly.")
        if record.blocked_until is None:
            record.blocked_until = self._clock() + self.memory_wait
        return None

    def _load(self, record: Record) -> None:
        name = record.spec.name
        with self._cond:
            record.on_demand = bool(record.waiters)
            self._set(record, "loading", error=None)
        t0 = time.perf_counter()
        before = self._measure()
        try:
            handle = record.spec.load()
        except Exception as exc:
            error = exc if isinstance(exc, AipcError) else EngineFailure(
                f"The {name} model could not be loaded; retry the request.")
            if not isinstance(exc, AipcError):
                log.exception("loading the %s model failed", name)
            else:
                log.warning("the %s model cannot be loaded: %s", name, exc.message)
            with self._cond:
                self._set(record, "failed", error=f"{type(exc).__name__}: {_first_line(exc)}")
                record.preload_keep = None
                self._fail_waiters(record, error)
            return
        size = round(max(0.0, self._measure() - before), 1)
        with self._cond:
            record.handle, record.size_mb = handle, size
            record.load_seconds = round(time.perf_counter() - t0, 3)
            self._set(record, "ready")
            record.on_demand = False
            record.last_used = self._clock()
            self._hand_out(record)
            if record.refs == 0:  # a load-only request: its keep-alive starts now
                keep = record.spec.keep_alive if record.preload_keep is None else record.preload_keep
                record.expires_at = _expiry(record.last_used, keep)
            record.preload_keep = None
            self._cond.notify_all()
        log.info("%s model loaded in %.2f s: +%.0f MB", name, record.load_seconds, size)

    def _unload(self, record: Record, why: str) -> None:
        name = record.spec.name
        with self._cond:
            if record.refs or record.state != "ready":  # taken again meanwhile
                return
            self._set(record, "unloading")
            handle, record.handle = record.handle, None
        before = self._measure()
        try:
            record.spec.unload(handle)
        except Exception:
            log.exception("unloading the %s model failed", name)
        del handle
        release_memory()
        freed = max(0.0, before - self._measure())
        with self._cond:
            record.unload_asked = False
            record.expires_at = None
            self._set(record, "unloaded")
            self._cond.notify_all()
        log.info("%s model unloaded (%s): RSS -%.0f MB", name, why, freed)

    def _recover(self, record: Record) -> None:
        name = record.spec.name
        with self._cond:
            recovery, record.recovery = record.recovery, None
            handle, record.handle = record.handle, None
        assert recovery is not None
        if handle is not None:
            try:
                record.spec.unload(handle)  # release the broken one before building its replacement
            except Exception:
                log.exception("letting go of the broken %s pipeline failed", name)
            del handle
        last: BaseException | None = None
        for attempt, pause in enumerate(REBUILD_BACKOFF_SECONDS[:MAX_REBUILDS], start=1):
            self._sleep(pause)
            if self._closed:
                return
            t0 = time.perf_counter()
            try:
                new = record.spec.load()
            except Exception as exc:
                last = exc
                log.exception("rebuilding the %s pipeline failed (attempt %d of %d)", name, attempt, MAX_REBUILDS)
                continue
            with self._cond:
                if self._closed:  # shut down meanwhile: the owner thread has been told already
                    return
                record.handle, record.restarts = new, record.restarts + 1
                record.load_seconds = round(time.perf_counter() - t0, 3)
                self._set(record, "ready")
                self._cond.notify_all()
            log.info("the %s pipeline was rebuilt in %.2f s (restart %d)", name, time.perf_counter() - t0,
                     record.restarts)
            self._end_recovery(recovery, ok=True)
            return
        with self._cond:
            record.broken = True
            self._set(record, "failed", error=f"{MAX_REBUILDS} rebuilds in a row failed; the last: "
                                              f"{type(last).__name__}: {_first_line(last)}")
            self._fail_waiters(record, NotReady(f"The {name} engine has failed ({record.error}); restart the "
                                                "server."))
        self._end_recovery(recovery, ok=False)

    def _end_recovery(self, recovery: Recovery, *, ok: bool) -> None:
        with self._cond:
            self._recoveries.discard(recovery)
            if not recovery.done.is_set():  # (close() may have ended it already: then it stays failed)
                recovery.ok = ok
                recovery.done.set()


def health_of(view: ModelView) -> EngineHealth:
    """An engine's health as its model's record says (``/ready``'s ``models.<kind>``)."""
    if view.state == "loading":
        return EngineHealth("loading", None, view.restarts, None if view.on_demand else RETRY_AFTER_SECONDS,
                            view.on_demand)
    if view.state == "recovering":
        return EngineHealth("recovering", view.error, view.restarts, RETRY_AFTER_SECONDS)
    if view.state == "failed":
        return EngineHealth("failed", view.error, view.restarts)
    return EngineHealth("unloaded" if view.state == "unloading" else view.state, None, view.restarts)


def in_flight_failure(kind: str) -> EngineFailure:
    """The error a request in flight gets when the pipeline fails under it."""
    return EngineFailure(f"The {kind} engine failed while serving this request and is being restarted; "
                         "retry the request.")


def _too_big(record: Record, limit: float) -> MemoryFull:
    return MemoryFull(f"The {record.spec.name} model needs about {record.cost_mb:.0f} MB, more than AIPC_MEMORY_LIMIT "
                      f"({limit:.0f} MB) allows; raise the limit or serve a smaller model.", retry_after=None)


def _first_line(exc: BaseException | None) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
