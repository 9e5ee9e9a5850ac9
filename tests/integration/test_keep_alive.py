"""Idle unload: an engine lets its pipeline go after AIPC_KEEP_ALIVE idle seconds and loads it again on demand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aipc_chat.engines.contract import GenParams, ImageParams
from aipc_chat.engines.image import OpenVINOImagePipelines, local_image_engine
from aipc_chat.engines.llm import LLMEngine, OpenVINOPipelines
from aipc_chat.settings import Settings
from tests.integration.test_llm_engine import collect

QUESTION = [{"role": "user", "content": "What is an NPU?"}]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def counting(factory: Callable[[], Any]) -> tuple[Callable[[], Any], list[float]]:
    built: list[float] = []

    def build() -> Any:
        built.append(time.monotonic())
        return factory()

    return build, built


def test_the_llm_unloads_when_idle_and_loads_again_for_the_next_requests(demo_models: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, keep_alive="1s")
    build, built = counting(OpenVINOPipelines(settings, demo_models / "llm", "CPU"))
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU", pipelines=build)
    engine.load()
    loop = engine._loop
    assert loop is not None
    try:
        async def ask(n: int) -> list[int]:
            streams = [engine.submit(QUESTION, GenParams(temperature=0, max_tokens=12), asyncio.get_running_loop())
                       for _ in range(n)]
            return [(await collect(s))[2].completion_tokens for s in streams]

        assert all(asyncio.run(ask(1)))
        assert engine.health().state == "ready"
        wait_for(lambda: engine.health().state == "unloaded")
        assert loop.pipe is None and len(built) == 1
        engine.check_serving()  # an unloaded model takes requests
        assert all(asyncio.run(ask(3)))  # three at once after the unload: one load serves them all
        assert len(built) == 2 and engine.health().state == "ready" and loop.pipe is not None
    finally:
        engine.close()


def test_never_unloads_with_minus_one(demo_models: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, keep_alive="-1")
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU")
    engine.load()
    try:
        time.sleep(1.5)
        assert engine.health().state == "ready"
    finally:
        engine.close()


def test_the_image_model_unloads_when_idle_and_loads_again(demo_models: Path, tmp_path: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path, keep_alive="1s")
    build, built = counting(OpenVINOImagePipelines(settings, demo_models / "image", "CPU"))
    engine = local_image_engine(settings, demo_models / "image", "demo-sd", "CPU", max_size=512, pipelines=build)
    engine.load()
    try:
        params = ImageParams(prompt="a red cube", width=64, height=64, steps=2, seed=1)

        def render() -> str:
            job = engine.submit(params)
            asyncio.run(job.wait(60))
            return job.state

        assert render() == "done"
        wait_for(lambda: engine.health().state == "unloaded")
        assert not engine.renderer.loaded and len(built) == 1
        states: list[str] = []
        threads = [threading.Thread(target=lambda: states.append(render())) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert states == ["done", "done"] and len(built) == 2 and engine.health().state == "ready"
    finally:
        engine.close()


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("250ms", 0.25),
                                                ("0", 0.0), ("12", 12.0), ("-1", None), (" 1.5s ", 1.5)])
def test_durations(text: str, seconds: float | None) -> None:
    assert Settings(keep_alive=text).keep_alive_seconds == seconds
