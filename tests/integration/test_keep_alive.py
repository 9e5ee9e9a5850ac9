"""Idle unload: an engine lets its pipeline go after AIPC_KEEP_ALIVE idle seconds and loads it again on demand."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aipc_chat.engines.contract import GenParams, ImageJob, ImageParams
from aipc_chat.engines.image import image_pipelines, local_image_engine
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.engines.llm import LLMEngine, OpenVINOPipelines
from aipc_chat.engines.scheduler import Scheduler
from aipc_chat.errors import InvalidRequest, MemoryFull
from aipc_chat.serving.aio import Reader, wait_job
from aipc_chat.settings import Settings
from tests.integration.test_llm_engine import collect
from tests.waiting import wait_until

QUESTION = [{"role": "user", "content": "What is an NPU?"}]


def wait_for(condition: Callable[[], bool], what: str = "the model's state") -> None:
    wait_until(condition, what)


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
            streams = [engine.submit(QUESTION, GenParams(temperature=0, max_tokens=12))
                       for _ in range(n)]
            return [(await collect(s))[2].completion_tokens for s in streams]

        assert all(asyncio.run(ask(1)))  # (a busy machine may have let the 1 s pass since load(): built again)
        wait_for(lambda: engine.health().state == "unloaded")
        before = len(built)
        assert loop.pipe is None and before >= 1
        engine.check_serving()  # an unloaded model takes requests
        assert all(asyncio.run(ask(3)))  # three at once after the unload: one load serves them all
        assert len(built) == before + 1  # (its state is not read: the 1 s timer may already have let it go again)
    finally:
        engine.close()


def test_never_unloads_with_minus_one(demo_models: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, keep_alive="-1")
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU")
    engine.load()
    try:
        # No timer is set: nothing would ever unload it (read from the scheduler, not waited for).
        assert engine.health().state == "ready" and engine.scheduler.view("llm").expires_in is None
        assert ask_one(engine) > 0
        assert engine.health().state == "ready" and engine.scheduler.view("llm").expires_in is None
    finally:
        engine.close()


def test_the_image_model_unloads_when_idle_and_loads_again(demo_models: Path, tmp_path: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path, keep_alive="1s")
    build, built = counting(image_pipelines(settings, demo_models / "image", "CPU"))
    engine = local_image_engine(settings, demo_models / "image", "demo-sd", "CPU", max_size=512, pipelines=build)
    engine.load()
    try:
        params = ImageParams(prompt="a red cube", width=64, height=64, steps=2, seed=1)

        def render() -> str:
            job = engine.submit(params)
            asyncio.run(wait_job(job, 60))
            return job.state

        assert render() == "done"  # (a busy machine may have let the 1 s pass since load(): built again)
        wait_for(lambda: engine.health().state == "unloaded")
        before = len(built)
        assert not engine.renderer.loaded and before >= 1
        # Two jobs queued together (one thread, back to back): one load serves both, whatever the timer does.
        jobs = [engine.submit(params) for _ in range(2)]
        for job in jobs:
            asyncio.run(wait_job(job, 60))
        assert [job.state for job in jobs] == ["done", "done"] and len(built) == before + 1
    finally:
        engine.close()


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300.0), ("30s", 30.0), ("1h", 3600.0), ("250ms", 0.25),
                                                ("0", 0.0), ("12", 12.0), ("-1", None), (" 1.5s ", 1.5)])
def test_durations(text: str, seconds: float | None) -> None:
    assert Settings(keep_alive=text).keep_alive_seconds == seconds


def ask_one(engine: LLMEngine, **params: Any) -> int:
    async def run() -> int:
        stream = engine.submit(QUESTION, GenParams(temperature=0, max_tokens=8, **params))
        return (await collect(stream))[2].completion_tokens

    return asyncio.run(run())


def render_one(engine: ImageEngine, **params: Any) -> ImageJob:
    job = engine.submit(ImageParams(prompt="a red cube", width=64, height=64, steps=2, seed=1, **params))
    asyncio.run(wait_job(job, 60))
    return job


def test_without_load_on_start_the_llm_loads_on_its_first_request(demo_models: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, load_on_start=False)
    build, built = counting(OpenVINOPipelines(settings, demo_models / "llm", "CPU"))
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU", pipelines=build)
    engine.load()
    try:
        assert built == []  # the tokenizer only
        assert engine.health().state == "unloaded" and engine.scheduler.view("llm").size_mb is None
        assert engine.prompt_tokens(QUESTION) > 5 and engine.reasons  # templating works without the pipeline
        assert ask_one(engine) > 0
        assert len(built) == 1 and engine.health().state == "ready"
        assert engine.scheduler.view("llm").size_mb is not None
    finally:
        engine.close()


def test_without_load_on_start_the_image_model_knows_its_sizes_before_it_loads(demo_models: Path,
                                                                                tmp_path: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path, load_on_start=False)
    build, built = counting(image_pipelines(settings, demo_models / "image", "CPU"))
    engine = local_image_engine(settings, demo_models / "image", "demo-sd", "CPU", max_size=512, pipelines=build)
    engine.load()
    try:
        lazy = (engine.renderer.step_multiple, engine.sampler)
        assert built == [] and engine.health().state == "unloaded"
        with pytest.raises(InvalidRequest, match="multiple of"):
            engine.submit(ImageParams(prompt="x", width=lazy[0] + 1, height=64, steps=2))
        assert render_one(engine).state == "done"
        assert len(built) == 1 and (engine.renderer.step_multiple, engine.sampler) == lazy  # as read from the files
    finally:
        engine.close()


def test_a_request_keep_alive_overrides_the_default(demo_models: Path) -> None:
    settings = Settings(demo=True, models_dir=demo_models.parent, keep_alive="-1")
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU")
    engine.load()
    try:
        assert ask_one(engine, keep_alive=0.0) > 0
        wait_for(lambda: engine.health().state == "unloaded")  # 0: let go right after the request
        assert ask_one(engine, keep_alive=math.inf) > 0
        assert engine.health().state == "ready" and engine.scheduler.view("llm").expires_in is None
        assert ask_one(engine) > 0  # no keep_alive: the server's default (never) again
        view = engine.scheduler.view("llm")
        assert view.state == "ready" and view.expires_in is None  # never
    finally:
        engine.close()


def both_engines(demo_models: Path, tmp_path: Path, **settings: Any) -> tuple[Scheduler, LLMEngine, ImageEngine]:
    s = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path, keep_alive="-1", **settings)
    scheduler = Scheduler(100 * 2**10, memory_wait=0.0)  # generous while both load and are measured; then lowered
    scheduler.start()
    llm = LLMEngine(s, demo_models / "llm", "demo", "CPU", scheduler=scheduler)
    image = local_image_engine(s, demo_models / "image", "demo-sd", "CPU", max_size=512, scheduler=scheduler)
    llm.load()
    image.load()
    return scheduler, llm, image


def room_for_one(scheduler: Scheduler) -> None:
    """A limit that holds either model but not both."""
    snap = scheduler.snapshot()
    scheduler.limit_mb = max(snap.models["llm"].cost_mb, snap.models["image"].cost_mb) + 1


def test_the_memory_limit_unloads_the_least_recently_used_idle_model(demo_models: Path, tmp_path: Path) -> None:
    scheduler, llm, image = both_engines(demo_models, tmp_path)
    try:
        assert llm.health().state == "ready" and image.health().state == "ready"
        room_for_one(scheduler)
        assert ask_one(llm) > 0 and llm.health().state == "ready"  # resident already: nothing to do
        image.release()  # as after an idle unload
        assert render_one(image).state == "done"  # the idle LLM made room
        assert llm.health().state == "unloaded" and image.health().state == "ready"
        assert ask_one(llm) > 0  # and the other way round
        assert image.health().state == "unloaded" and llm.health().state == "ready"
        assert scheduler.snapshot().counted_mb == scheduler.view("llm").cost_mb
    finally:
        llm.close()
        image.close()
        scheduler.close()


def test_a_model_that_cannot_fit_beside_a_busy_one_gets_503(demo_models: Path, tmp_path: Path) -> None:
    scheduler, llm, image = both_engines(demo_models, tmp_path, max_tokens_limit=4096)
    try:
        room_for_one(scheduler)
        image.release()

        async def long_answer() -> None:
            stream = llm.submit(QUESTION, GenParams(max_tokens=4000, ignore_eos=True))
            async for _ in Reader(stream):
                break  # generating: the LLM is busy
            with pytest.raises(MemoryFull, match="in use") as refused:
                await asyncio.to_thread(render_one, image)
            stream.cancel()
            assert refused.value.retry_after and refused.value.status == 503

        asyncio.run(long_answer())
        assert image.health().state == "unloaded"  # and loads when there is room
    finally:
        llm.close()
        image.close()
        scheduler.close()
