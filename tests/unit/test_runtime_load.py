"""The runtime gets its two engines ready at once (the image's pipeline loads after the LLM's), and one failing does
not keep the other from serving."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from aipc_chat.runtime import ModelStatus, Runtime
from aipc_chat.settings import Settings


class FakeEngine:
    """Stands in for an engine: loading it only waits for the other model's load to have begun."""

    def __init__(self, kind: str, both_loading: threading.Barrier, fail: bool, events: list[str]) -> None:
        self.kind, self.both_loading, self.fail, self.events = kind, both_loading, fail, events
        self.observers: list[object] = []

    def load(self, preload: bool | None = None) -> None:
        self.both_loading.wait()  # raises BrokenBarrierError if the other load does not start meanwhile
        if self.fail:
            raise RuntimeError("the device went away")
        if preload:
            self.preload()

    def preload(self) -> None:
        self.events.append(f"{self.kind} pipeline")


def load_with(runtime: Runtime, monkeypatch: pytest.MonkeyPatch, failing: str | None) -> list[str]:
    barrier = threading.Barrier(2, timeout=10)
    events: list[str] = []

    def make_engine(kind: str, status: ModelStatus) -> FakeEngine:
        return FakeEngine(kind, barrier, fail=kind == failing, events=events)

    monkeypatch.setattr(runtime, "_make_engine", make_engine)
    runtime.load()
    return events


def test_both_models_load_at_the_same_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime(Settings(demo=True, models_dir=tmp_path / "models", data_dir=tmp_path / "data"))
    events = load_with(runtime, monkeypatch, failing=None)
    assert {kind: status.state for kind, status in runtime.status.items()} == {"llm": "ready", "image": "ready"}
    assert events == ["llm pipeline", "image pipeline"]  # one at a time, the LLM first


def test_one_model_failing_leaves_the_other_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime(Settings(demo=True, models_dir=tmp_path / "models", data_dir=tmp_path / "data"))
    load_with(runtime, monkeypatch, failing="image")
    assert runtime.status["llm"].state == "ready"
    assert runtime.status["image"].state == "failed"
    assert runtime.status["image"].error == "RuntimeError: the device went away"
