"""Fault injection through the engines' pipeline factories: a real pipeline, wrapped so a chosen call raises."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class InjectedFault(RuntimeError):
    """The error an injected fault raises."""


class Faulty:
    """A real pipeline whose call ``at`` raises ``times`` times once ``after`` such calls have passed.

    ``at`` is a pipeline method (``add_request``, ``step``, ``generate`` for an image pipeline) or ``read``, the
    method of the handles ``add_request`` returns.
    """

    def __init__(self, real: Any, at: str, *, times: int = 1, after: int = 0) -> None:
        self.real, self.at, self.times, self.after = real, at, times, after
        self.calls = 0
        self.fired = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls > self.after and self.fired < self.times:
            self.fired += 1
            raise InjectedFault(f"injected fault in {self.at} (call {self.calls})")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name == "add_request" and self.at == "read":
            return lambda *args: FaultyHandle(attr(*args), self)
        if name != self.at:
            return attr

        def failing(*args: Any, **kwargs: Any) -> Any:
            self._maybe_fail()
            return attr(*args, **kwargs)

        return failing

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.at == "__call__":
            self._maybe_fail()
        return self.real(*args, **kwargs)


class FaultyHandle:
    """A generation handle whose ``read`` goes through the fault."""

    def __init__(self, real: Any, fault: Faulty) -> None:
        self.real, self.fault = real, fault

    def read(self) -> Any:
        self.fault._maybe_fail()
        return self.real.read()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Factories:
    """A pipeline factory that serves a scripted sequence: each build takes the next item of ``script``.

    An item is ``"real"``, ``"fail"`` (the build itself raises), ``"block"`` (waits for ``release`` first, then
    builds a real one) or a callable wrapping the real pipeline (``lambda p: Faulty(p, "step")``). After the
    script, builds are real.
    """

    def __init__(self, real: Callable[[], Any], *script: str | Callable[[Any], Any]) -> None:
        self.real, self.script = real, list(script)
        self.builds = 0
        self.release = threading.Event()
        self.blocked = threading.Event()

    def __call__(self) -> Any:
        item = self.script[self.builds] if self.builds < len(self.script) else "real"
        self.builds += 1
        if item == "fail":
            raise InjectedFault(f"injected build failure (build {self.builds})")
        if item == "block":
            self.blocked.set()
            self.release.wait(60)
        pipe = self.real()
        return item(pipe) if callable(item) else pipe


def owner_threads() -> list[str]:
    """Names of the engines' owner threads alive now."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("llm-owner", "image-owner")) and t.is_alive()]
