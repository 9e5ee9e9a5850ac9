"""Faults injected through the pipeline factories of the real engines (demo models): a request may fail, the
engine may not. Each fault shows who fails (the culprit alone when the engine can tell), that the next request is
served, what the engine's health says during and after, and that no owner thread is left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aipc_chat.engines import scheduler
from aipc_chat.engines.contract import Delta, Done, GenParams, ImageJob, ImageParams, LLMStream
from aipc_chat.engines.image import image_pipelines, local_image_engine
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.engines.llm import LLMEngine, OpenVINOPipelines
from aipc_chat.errors import EngineFailure, InvalidRequest, NotReady
from aipc_chat.runtime import Runtime, retry_after
from aipc_chat.serving.aio import Reader, wait_job
from aipc_chat.settings import Settings
from tests.faults import Factories, Faulty, owner_threads
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

BAD_SCHEMAS = {
    '{"type": "objectt"}': 'Unsupported type "objectt"',
    '{"type": "string", "pattern": "["}': "Unclosed '['",
    '{"$ref": "#/nowhere"}': "Cannot find field nowhere",
}


@pytest.fixture(autouse=True)
def _quick_rebuilds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(scheduler, "REBUILD_BACKOFF_SECONDS", (0.0, 0.0, 0.0))
    yield
    assert owner_threads() == [], "an engine left its owner thread behind"


def llm_settings(demo_models: Path) -> Settings:
    return Settings(demo=True, models_dir=demo_models.parent, llm_warmup=False, max_num_seqs=4)


def llm(demo_models: Path, *script: Any) -> tuple[LLMEngine, Factories]:
    settings = llm_settings(demo_models)
    factories = Factories(OpenVINOPipelines(settings, demo_models / "llm", "CPU"), *script)
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU", pipelines=factories)
    engine.load()
    return engine, factories


async def outcome(stream: LLMStream) -> Done | BaseException:
    """How a stream ended: its Done, or the error that ended it."""
    try:
        items = [item async for item in Reader(stream)]
    except Exception as exc:
        return exc
    done = items[-1]
    assert isinstance(done, Done) and all(isinstance(i, Delta) for i in items[:-1])
    return done


def run_together(engine: LLMEngine, *params: GenParams) -> list[Done | BaseException]:
    async def main() -> list[Done | BaseException]:
        streams = [engine.submit([{"role": "user", "content": f"Question {i}"}], p)
                   for i, p in enumerate(params)]
        return list(await asyncio.gather(*(outcome(s) for s in streams)))

    return asyncio.run(main())


def wait_state(engine: LLMEngine | ImageEngine, state: str = "ready") -> None:
    """Wait for the engine's state (the rebuild runs on the owner thread after the failed requests end)."""
    wait_until(lambda: engine.health().state == state, f"state {state}")


def serves(engine: LLMEngine) -> bool:
    (result,) = run_together(engine, GenParams(max_tokens=8))
    return isinstance(result, Done) and result.completion_tokens > 0


LONG = GenParams(max_tokens=40, ignore_eos=True)


def test_a_request_add_request_refuses_fails_alone(demo_models: Path) -> None:
    engine, _ = llm(demo_models, lambda p: Faulty(p, "add_request", after=1))
    try:
        first, second = run_together(engine, LONG, LONG)
        assert isinstance(first, Done) and first.completion_tokens == 40
        assert isinstance(second, EngineFailure)
        assert engine.health().state == "ready" and engine.health().restarts == 0
        assert serves(engine)
    finally:
        engine.close()


def test_an_unreadable_output_fails_that_request_alone(demo_models: Path) -> None:
    engine, _ = llm(demo_models, lambda p: Faulty(p, "read", after=3))
    try:
        results = run_together(engine, LONG, LONG)
        failed = [r for r in results if isinstance(r, EngineFailure)]
        finished = [r for r in results if isinstance(r, Done)]
        assert len(failed) == 1 and len(finished) == 1 and finished[0].completion_tokens == 40
        assert engine.health().state == "ready" and engine.health().restarts == 0
        assert serves(engine)
    finally:
        engine.close()


def test_a_failed_step_fails_what_is_in_flight_and_the_pipeline_is_rebuilt(demo_models: Path) -> None:
    engine, factories = llm(demo_models, lambda p: Faulty(p, "step", after=3))
    try:
        results = run_together(engine, LONG, LONG)
        assert all(isinstance(r, EngineFailure) and "being restarted" in r.message for r in results), results
        wait_state(engine)
        assert serves(engine)
        assert factories.builds == 2 and engine.health().restarts == 1
        health = engine.health()
        assert health.state == "ready" and health.error is None
        assert owner_threads() == ["llm-owner"]
    finally:
        engine.close()


@pytest.mark.parametrize("schema", list(BAD_SCHEMAS))
def test_a_schema_that_does_not_compile_is_a_400_before_admission(demo_models: Path, schema: str) -> None:
    engine, factories = llm(demo_models)
    try:
        with pytest.raises(InvalidRequest) as err:
            engine.submit([{"role": "user", "content": "JSON please"}], GenParams(json_schema=schema))
        assert err.value.param == "response_format" and BAD_SCHEMAS[schema] in err.value.message
        assert ".cc" not in err.value.message and "[" not in err.value.message[:3], "no build paths or timestamps"
        assert serves(engine) and engine.health().restarts == 0 and factories.builds == 1
    finally:
        engine.close()


def test_the_check_caches_each_verdict(demo_models: Path) -> None:
    engine, _ = llm(demo_models)
    try:
        good = GenParams(json_schema='{"type": "object", "properties": {"a": {"type": "integer"}}}', max_tokens=4)
        for _ in range(3):
            engine.submit([{"role": "user", "content": "x"}], good).cancel()
            with pytest.raises(InvalidRequest):
                engine.submit([{"role": "user", "content": "x"}], GenParams(json_schema='{"type": "objectt"}'))
        assert len(engine.constraints.compile_seconds) == 2  # one compile per schema text
    finally:
        engine.close()


def test_a_really_broken_pipeline_recovers(demo_models: Path) -> None:
    """Without the pre-check, a bad schema breaks the real pipeline (every later step raises): it is rebuilt."""
    engine, factories = llm(demo_models)
    engine.constraints.available = False
    try:
        bad, other = run_together(engine, GenParams(json_schema='{"type": "objectt"}', max_tokens=8), LONG)
        assert isinstance(bad, EngineFailure)
        # the other fails with it if it shared the broken step, else it waited and the new pipeline served it whole
        assert isinstance(other, EngineFailure) or isinstance(other, Done) and other.completion_tokens == 40
        wait_state(engine)
        assert serves(engine) and serves(engine)
        assert engine.health().restarts == 1 and factories.builds == 2
    finally:
        engine.close()


def test_three_failed_rebuilds_leave_the_engine_failed_for_good(demo_models: Path) -> None:
    engine, _ = llm(demo_models, lambda p: Faulty(p, "step"), "fail", "fail", "fail")
    try:
        (result,) = run_together(engine, LONG)
        assert isinstance(result, EngineFailure)
        wait_state(engine, "failed")
        health = engine.health()
        assert health.state == "failed" and "3 rebuilds in a row failed" in (health.error or "")
        assert health.retry_after is None
        with pytest.raises(NotReady, match="restart the server") as err:
            engine.submit([{"role": "user", "content": "Hi"}], GenParams())
        assert err.value.retry_after is None
    finally:
        engine.close()


def test_the_runtime_reports_recovering_then_ready(demo_settings: Settings) -> None:
    """While the pipeline is rebuilt: /ready's view says recovering with Retry-After, new requests get 503."""
    factories: dict[str, Factories] = {}

    def wrap(kind: str, real: Any) -> Any:
        script = (lambda p: Faulty(p, "step", after=2), "block") if kind == "llm" else ()
        factories[kind] = Factories(real, *script)
        return factories[kind]

    runtime = Runtime(demo_settings.model_copy(update={"llm_warmup": False}), pipelines=wrap)
    runtime.load()
    try:
        assert runtime.ready
        engine = runtime.require_llm()
        stream = engine.submit([{"role": "user", "content": "Hi"}], LONG)
        assert factories["llm"].blocked.wait(30)
        models = runtime.describe()
        assert models["llm"]["state"] == "recovering" and models["image"]["state"] == "ready"
        assert not runtime.ready and retry_after(models) == scheduler.RETRY_AFTER_SECONDS
        with pytest.raises(NotReady) as err:
            runtime.require_llm()
        assert err.value.retry_after == scheduler.RETRY_AFTER_SECONDS
        factories["llm"].release.set()
        assert isinstance(asyncio.run(outcome(stream)), EngineFailure)
        wait_until(lambda: runtime.ready, "the runtime ready again")
        models = runtime.describe()
        assert models["llm"]["state"] == "ready" and models["llm"]["restarts"] == 1
        assert serves(runtime.require_llm())  # type: ignore[arg-type]
    finally:
        runtime.close()


# --- images --------------------------------------------------------------------------------------------------------


def images(demo_models: Path, tmp_path: Path, *script: Any) -> tuple[ImageEngine, Factories]:
    settings = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path)
    factories = Factories(image_pipelines(settings, demo_models / "image", "CPU"), *script)
    engine = local_image_engine(settings, demo_models / "image", "demo-sd", "CPU", max_size=512,
                                pipelines=factories)
    engine.load()
    return engine, factories


def render(engine: ImageEngine, seed: int = 1) -> ImageJob:
    job = engine.submit(ImageParams(prompt="a red cube", width=64, height=64, steps=2, seed=seed))

    async def wait() -> None:
        try:
            await wait_job(job, 60)
        except Exception:
            return

    asyncio.run(wait())
    return job


def test_an_image_pipeline_that_raises_fails_its_job_alone_and_is_rebuilt(demo_models: Path, tmp_path: Path) -> None:
    engine, factories = images(demo_models, tmp_path, lambda p: Faulty(p, "generate"))
    try:
        broken = render(engine)
        assert broken.state == "failed" and isinstance(broken.failure, EngineFailure)
        assert broken.images == [] and engine.store.path(broken.names[0]) is None
        wait_state(engine)
        fine = render(engine, seed=2)
        assert fine.state == "done" and engine.store.path(fine.names[0]) is not None
        assert engine.health().restarts == 1 and factories.builds == 2 and engine.health().state == "ready"
    finally:
        engine.close()


def test_an_image_engine_whose_rebuilds_fail_says_failed(demo_models: Path, tmp_path: Path) -> None:
    engine, _ = images(demo_models, tmp_path, lambda p: Faulty(p, "generate"), "fail", "fail", "fail")
    try:
        assert render(engine).state == "failed"
        wait_state(engine, "failed")
        with pytest.raises(NotReady, match="restart the server"):
            engine.submit(ImageParams(prompt="x", width=64, height=64, steps=2))
    finally:
        engine.close()


def test_the_serial_npu_loop_fails_the_request_and_rebuilds(demo_models: Path) -> None:
    """The NPU path (one request at a time through LLMPipeline), run here on the CPU through the factory."""
    import openvino_genai as ov_genai

    settings = llm_settings(demo_models)
    factories = Factories(lambda: ov_genai.LLMPipeline(str(demo_models / "llm"), "CPU"),
                          lambda p: Faulty(p, "generate", after=1))
    engine = LLMEngine(settings, demo_models / "llm", "demo", "NPU", pipelines=factories)
    engine.load()
    try:
        assert serves(engine)  # the first generate passes
        (failed,) = run_together(engine, GenParams(max_tokens=8))
        assert isinstance(failed, EngineFailure)
        wait_state(engine)
        assert serves(engine) and engine.health().restarts == 1 and factories.builds == 2
        assert owner_threads() == ["llm-owner-serial"]
    finally:
        engine.close()
