"""Which models are resident, when an idle one is let go, and the memory budget over them.

Each local engine owns a ``Slot``: its ``Keeper`` says when its owner thread should unload the idle pipeline
(``AIPC_KEEP_ALIVE``, or the last request's ``keep_alive``, or an eviction the budget asked for). ``Residency``
records what each model costs (the process's RSS growth while it loaded) and, with ``AIPC_MEMORY_LIMIT``, makes room
before a load by asking the least recently used idle model to unload; a load that cannot fit raises ``MemoryFull``
(503 with Retry-After). Loads are serialized under a limit, so each one's measured cost is its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aipc_chat.engines.memory import release_memory, rss_mb
from aipc_chat.errors import MemoryFull

log = logging.getLogger(__name__)

EVICT_WAIT_SECONDS = 30.0  # how long a load waits for an idle model it asked to unload
MEMORY_RETRY_AFTER = 10


def weights_mb(model_dir: Path) -> float:
    """A model's weights on disk in MiB (a GGUF file, or the ``.bin`` files of an IR folder and its subfolders):
    what loading it is expected to take before it has been measured."""
    files = [model_dir] if model_dir.is_file() else list(model_dir.rglob("*.bin"))
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)


class Keeper:
    """When an idle pipeline is due to be let go (used on its owner thread; ``ask`` from any thread)."""

    def __init__(self, keep_alive: float | None) -> None:
        self.default = math.inf if keep_alive is None else keep_alive
        self.keep = self.default  # the last request's keep_alive, or the default
        self._since = time.monotonic()
        self._asks: list[tuple[threading.Event, float]] = []
        self._lock = threading.Lock()

    def busy(self) -> None:
        """There is work: the idle time starts again from now."""
        self._since = time.monotonic()

    def finished(self, keep_alive: float | None) -> None:
        """A request ended; its ``keep_alive`` (seconds, ``math.inf`` for never), if it gave one, holds from now."""
        self.keep = self.default if keep_alive is None else keep_alive
        self._since = time.monotonic()

    @property
    def idle_seconds(self) -> float:
        """Seconds since the last work."""
        return time.monotonic() - self._since

    @property
    def expires_in(self) -> float:
        """Seconds until an idle unload (``math.inf``: never)."""
        return max(0.0, self.keep - self.idle_seconds)

    def due(self) -> bool:
        """Whether to unload now: idle for ``keep`` seconds, or asked to by the budget (and the ask still waits)."""
        now = time.monotonic()
        with self._lock:
            self._asks = [(event, deadline) for event, deadline in self._asks if deadline > now]
            asked = bool(self._asks)
        return asked or now - self._since >= self.keep

    def ask(self, timeout: float) -> threading.Event:
        """Ask the owner to unload at its next idle moment; the event is set once it has."""
        event = threading.Event()
        with self._lock:
            self._asks.append((event, time.monotonic() + timeout))
        return event

    def unloaded(self) -> None:
        """The pipeline was let go: whoever asked hears of it."""
        with self._lock:
            asks, self._asks = self._asks, []
        for event, _ in asks:
            event.set()


@dataclass
class Slot:
    """One model's place in the budget."""

    kind: str
    estimate_mb: float  # what it is expected to take before it has been measured (its weights on disk)
    headroom_mb: float = 0.0  # what it may still grow by once loaded (an LLM's KV cache)
    keeper: Keeper = field(default_factory=lambda: Keeper(None))
    idle: Callable[[], bool] = lambda: True  # no work in flight now
    loaded: bool = False
    resident_mb: float | None = None  # RSS growth at its last load
    freed_mb: float | None = None  # RSS drop at its last unload
    last_used: float = field(default_factory=time.monotonic)

    @property
    def cost_mb(self) -> float:
        """What the budget counts for this model when resident: its RSS growth at load (its weights on disk until
        it has loaded once), plus what it may still grow by. Not the drop at unload: ``malloc_trim`` then also
        returns memory other work freed."""
        return (self.resident_mb or self.estimate_mb) + self.headroom_mb


class Residency:
    """The resident models of one process and the memory budget over them (thread-safe)."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self.limit_mb = limit_bytes / 2**20 if limit_bytes else None
        self.slots: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._loads = threading.Lock() if self.limit_mb else None  # one load at a time under a limit

    def add(self, slot: Slot) -> Slot:
        """Register a model (before it loads)."""
        with self._lock:
            self.slots[slot.kind] = slot
        return slot

    @contextlib.contextmanager
    def loading(self, slot: Slot) -> Iterator[None]:
        """Around loading ``slot``'s pipeline: make room for it first (``MemoryFull`` when there is none), then
        record the RSS growth as its cost."""
        with self._loads if self._loads is not None else contextlib.nullcontext():
            self._make_room(slot)
            before = rss_mb()
            yield
            slot.resident_mb = round(max(0.0, rss_mb() - before), 1)
            slot.loaded, slot.last_used = True, time.monotonic()
        log.info("%s model resident: +%.0f MB", slot.kind, slot.resident_mb)

    def unload(self, slot: Slot, let_go: Callable[[], object]) -> None:
        """Let ``slot``'s pipeline go (its owner thread) and give the memory back; record what came back."""
        before = rss_mb()
        let_go()
        release_memory()
        slot.freed_mb = round(max(0.0, before - rss_mb()), 1)
        slot.loaded = False
        slot.keeper.unloaded()
        log.info("%s model unloaded after %.0f s idle: RSS -%.0f MB", slot.kind, slot.keeper.idle_seconds,
                 slot.freed_mb)

    def used(self, slot: Slot) -> None:
        """A request for ``slot``'s model came (least-recently-used order)."""
        slot.last_used = time.monotonic()

    def counted_mb(self) -> float:
        """What the budget counts now: the costs of the resident models."""
        return round(sum(s.cost_mb for s in self.slots.values() if s.loaded), 1)

    def fits(self, slot: Slot) -> bool:
        """Whether ``slot``'s model can ever be resident under the limit."""
        return self.limit_mb is None or slot.cost_mb <= self.limit_mb

    def _make_room(self, slot: Slot) -> None:
        limit = self.limit_mb
        if limit is None:
            return
        need = slot.cost_mb
        if not self.fits(slot):
            raise MemoryFull(f"The {slot.kind} model needs about {need:.0f} MB, more than AIPC_MEMORY_LIMIT "
                             f"({limit:.0f} MB) allows; raise the limit or serve a smaller model.", retry_after=None)
        while True:
            others = [s for s in self.slots.values() if s is not slot and s.loaded]
            if sum(s.cost_mb for s in others) + need <= limit:
                return
            idle = sorted((s for s in others if s.idle()), key=lambda s: s.last_used)
            if not idle:
                busy = ", ".join(s.kind for s in others)
                raise MemoryFull(f"Loading the {slot.kind} model (about {need:.0f} MB) would exceed "
                                 f"AIPC_MEMORY_LIMIT ({limit:.0f} MB) while the {busy} model is in use; retry "
                                 "shortly.", retry_after=MEMORY_RETRY_AFTER)
            victim = idle[0]
            log.info("memory limit: unloading the idle %s model to load the %s model", victim.kind, slot.kind)
            if not victim.keeper.ask(EVICT_WAIT_SECONDS).wait(EVICT_WAIT_SECONDS):
                raise MemoryFull(f"The {victim.kind} model did not unload in time to make room for the {slot.kind} "
                                 "model; retry shortly.", retry_after=MEMORY_RETRY_AFTER)
