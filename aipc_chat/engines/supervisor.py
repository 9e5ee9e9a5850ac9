"""Supervision of one engine's pipeline: its state, and rebuilding it when it fails.

A request may fail; the engine may not. When a pipeline raises in a way that may have left it broken (a failed
``step``, an image pipeline that raised), its owner thread fails the work in flight and calls ``recover``, which
builds a new pipeline through the engine's factory (the compile cache makes this quick). While it does, the state
is ``recovering`` and new requests get 503 with Retry-After. After ``MAX_REBUILDS`` failed rebuilds in a row the
state is ``failed`` and stays so: a restart of the process is needed, and ``/ready`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aipc_chat.engines.contract import RETRY_AFTER_SECONDS, EngineHealth, EngineState
from aipc_chat.errors import AipcError, EngineFailure, NotReady

log = logging.getLogger(__name__)

MAX_REBUILDS = 3
REBUILD_BACKOFF_SECONDS = (0.0, 0.5, 2.0)  # before each attempt of one recovery
RECOVERING_RETRY_AFTER = RETRY_AFTER_SECONDS


class Supervisor:
    """The state of one engine, and its recovery; thread-safe."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.state: EngineState = "loading"
        self.error: str | None = None
        self.restarts = 0  # successful rebuilds
        self.last_rebuild_seconds: float | None = None
        self._lock = threading.Lock()
        self._reloading = False  # loading again after an idle unload (requests wait) rather than at start
        self._sleep: Callable[[float], None] = time.sleep

    def health(self) -> EngineHealth:
        """The state as ``/ready`` reports it."""
        reloading = self.state == "loading" and self._reloading
        retry = RECOVERING_RETRY_AFTER if self.state in ("recovering", "loading") and not reloading else None
        return EngineHealth(self.state, self.error, self.restarts, retry, reloading)

    def set_ready(self) -> None:
        """The pipeline serves."""
        with self._lock:
            self.state, self.error, self._reloading = "ready", None, False

    def set_unloaded(self) -> None:
        """The pipeline was let go after idling; the next request loads it again."""
        with self._lock:
            self.state, self.error, self._reloading = "unloaded", None, False

    def load_again(self, load: Callable[[], None]) -> AipcError | None:
        """Load the pipeline of an unloaded engine (owner thread; requests are taken meanwhile and wait for it).
        On failure, the error for the requests that waited; the state is ``unloaded`` again, so the next request
        tries again."""
        with self._lock:
            self.state, self._reloading = "loading", True
        t0 = time.perf_counter()
        try:
            load()
        except AipcError as exc:  # the memory budget has no room now: the requests hear why
            log.warning("the %s pipeline cannot be loaded now: %s", self.kind, exc.message)
            self.set_unloaded()
            return exc
        except Exception:
            log.exception("loading the %s pipeline failed", self.kind)
            self.set_unloaded()
            return EngineFailure(f"The {self.kind} model could not be loaded; retry the request.")
        self.set_ready()
        log.info("%s pipeline loaded in %.2f s", self.kind, time.perf_counter() - t0)
        return None

    def set_failed(self, error: str) -> None:
        """The engine cannot serve any more."""
        with self._lock:
            self.state, self.error = "failed", error

    def check_serving(self) -> None:
        """Raise the 503 a new request gets unless the engine is ready."""
        state = self.state
        if state in ("ready", "unloaded") or (state == "loading" and self._reloading):
            return  # an unloaded model is servable: the request waits while it loads
        if state == "failed":
            raise NotReady(f"The {self.kind} engine has failed ({self.error}); restart the server.")
        if state == "recovering":
            raise NotReady(f"The {self.kind} engine is recovering from an internal error; retry shortly.",
                           retry_after=RECOVERING_RETRY_AFTER)
        raise NotReady(f"The {self.kind} engine is {state}; retry shortly.", retry_after=RECOVERING_RETRY_AFTER)

    def recover(self, cause: BaseException, rebuild: Callable[[], None]) -> bool:
        """Rebuild after ``cause``; True when the engine serves again, False when it has failed for good."""
        with self._lock:
            self.state, self.error = "recovering", f"{type(cause).__name__}: {_first_line(cause)}"
        log.warning("the %s pipeline failed (%s); rebuilding it", self.kind, self.error)
        last: BaseException | None = None
        for attempt, pause in enumerate(REBUILD_BACKOFF_SECONDS[:MAX_REBUILDS], start=1):
            self._sleep(pause)
            t0 = time.perf_counter()
            try:
                rebuild()
            except Exception as exc:
                last = exc
                log.exception("rebuilding the %s pipeline failed (attempt %d of %d)", self.kind, attempt,
                              MAX_REBUILDS)
                continue
            self.last_rebuild_seconds = time.perf_counter() - t0
            with self._lock:
                self.restarts += 1
                self.state, self.error = "ready", None
            log.info("the %s pipeline was rebuilt in %.2f s (restart %d)", self.kind, self.last_rebuild_seconds,
                     self.restarts)
            return True
        assert last is not None
        self.set_failed(f"{MAX_REBUILDS} rebuilds in a row failed; the last: {type(last).__name__}: "
                        f"{_first_line(last)}")
        return False


def in_flight_failure(kind: str) -> EngineFailure:
    """The error a request in flight gets when the pipeline fails under it."""
    return EngineFailure(f"The {kind} engine failed while serving this request and is being restarted; "
                         "retry the request.")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
