"""The LLM engine on the demo model through openvino-genai's continuous batching."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import openvino_genai as ov_genai
import pytest

from aipc_chat.engines.contract import Delta, Done, GenParams, LLMStream
from aipc_chat.engines.llm import LLMEngine, OpenVINOPipelines
from aipc_chat.engines.llm_loop import BatchLoop, capacity
from aipc_chat.errors import Busy, Cancelled, ContextLengthExceeded, EngineFailure, InvalidRequest, NotReady
from aipc_chat.serving.aio import Reader
from aipc_chat.settings import Settings
from tests.waiting import async_wait_until

pytestmark = pytest.mark.integration


async def collect(stream: LLMStream) -> tuple[str, str, Done, int]:
    reasoning, content, deltas = [], [], 0
    done = None
    async for item in Reader(stream):
        if isinstance(item, Delta):
            reasoning.append(item.reasoning)
            content.append(item.content)
            deltas += 1
        else:
            done = item
    assert done is not None
    return "".join(reasoning), "".join(content), done, deltas


def run(engine: LLMEngine, text: str, params: GenParams) -> tuple[str, str, Done, int]:
    async def main() -> tuple[str, str, Done, int]:
        stream = engine.submit([{"role": "user", "content": text}], params)
        return await collect(stream)

    return asyncio.run(main())


def test_template_opens_think_in_prompt(llm_engine: LLMEngine) -> None:
    prompt = llm_engine.render_prompt([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi"}])
    assert prompt.startswith("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>")
    assert prompt.endswith("<think>\n")


def test_earlier_reasoning_is_not_fed_back(llm_engine: LLMEngine) -> None:
    prompt = llm_engine.render_prompt([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nsecret musing\n</think>\n\nHello!"},
        {"role": "user", "content": "Again"},
    ])
    assert "secret musing" not in prompt and "Hello!" in prompt


def test_greedy_reply_has_reasoning_and_answer(llm_engine: LLMEngine) -> None:
    reasoning, content, done, _ = run(llm_engine, "What is OpenVINO?", GenParams(temperature=0, max_tokens=200))
    assert reasoning.strip() and content.strip()
    assert "</think>" not in content and "</think>" not in reasoning
    assert done.finish_reason == "stop" and 0 < done.completion_tokens < 200


def test_engine_matches_raw_pipeline_greedy(llm_engine: LLMEngine) -> None:
    """Same model, same prompt, greedy: the engine's text is what LLMPipeline.generate gives."""
    pipe = ov_genai.LLMPipeline(str(llm_engine.model_dir), "CPU")
    prompt = llm_engine.render_prompt([{"role": "user", "content": "Explain gravity in one sentence."}])
    config = ov_genai.GenerationConfig(max_new_tokens=120, do_sample=False)
    config.apply_chat_template = False  # the prompt is templated already
    raw = str(pipe.generate(prompt, config))
    reasoning, content, _, _ = run(llm_engine, "Explain gravity in one sentence.",
                                   GenParams(temperature=0, max_tokens=120))
    assert raw.split("</think>")[-1].strip() == content.strip()
    assert raw.split("</think>")[0].strip() == reasoning.strip()


def test_concurrent_streams_each_get_their_own_text(llm_engine: LLMEngine) -> None:
    """Streams decoded together (one detokenizer call per step for all of them) match their raw greedy texts."""
    pipe = ov_genai.LLMPipeline(str(llm_engine.model_dir), "CPU")
    config = ov_genai.GenerationConfig(max_new_tokens=60, do_sample=False)
    config.apply_chat_template = False
    questions = ["Explain gravity in one sentence.", "What is a laptop?", "Tell me about rivers."]
    raw = [str(pipe.generate(llm_engine.render_prompt([{"role": "user", "content": q}]), config))
           for q in questions]

    async def main() -> list[tuple[str, str, Done, int]]:
        streams = [llm_engine.submit([{"role": "user", "content": q}], GenParams(temperature=0, max_tokens=60))
                   for q in questions]
        return list(await asyncio.gather(*(collect(s) for s in streams)))

    for text, (reasoning, content, _, _) in zip(raw, asyncio.run(main()), strict=True):
        assert (reasoning + content).strip()
        assert text.split("</think>")[0].strip() == reasoning.strip()
        assert text.split("</think>")[-1].strip() == content.strip()


def test_reasoning_budget_forces_an_answer(llm_engine: LLMEngine) -> None:
    reasoning, content, done, _ = run(llm_engine, "Tell me about the weather today.",
                                      GenParams(temperature=0, max_tokens=200, reasoning_budget=3))
    assert content.strip(), "the engine must close </think> and let the model answer"
    assert len(llm_engine.encode(reasoning)) <= 6
    assert done.finish_reason == "stop"


def test_max_tokens_counts_exactly(llm_engine: LLMEngine) -> None:
    *_, done, _ = run(llm_engine, "Hello", GenParams(max_tokens=9, ignore_eos=True))
    assert (done.finish_reason, done.completion_tokens) == ("length", 9)


def test_cancel_frees_the_slot_at_once(llm_engine: LLMEngine) -> None:
    """Freed within a few steps of the cancel, not at the end of its 3000 tokens: the time to free is compared
    with the time per token measured in the same run (a ratio, with a wide margin).

    The time per token is the time from submitting to the 11th chunk over the tokens those chunks carried: an
    upper bound (the prefill is in it, and tokens made but not yet read are not), which a busy machine cannot
    shrink by delivering chunks in a burst (timing chunks as they are read once gave 2 us per chunk)."""
    async def main() -> tuple[float, float]:
        submitted = time.perf_counter()
        stream = llm_engine.submit([{"role": "user", "content": "Go on forever."}],
                                   GenParams(max_tokens=3000, ignore_eos=True))
        chunks = tokens = 0
        async for item in Reader(stream):
            assert isinstance(item, Delta)
            chunks += 1
            tokens += item.tokens
            if chunks == 11:
                break
        per_token = (time.perf_counter() - submitted) / tokens
        assert llm_engine.active == 1
        stream.cancel()
        t0 = time.perf_counter()
        await async_wait_until(lambda: llm_engine.active == 0, "the slot freed", poll=0.005)
        return time.perf_counter() - t0, per_token

    to_free, per_token = asyncio.run(main())
    assert to_free < 300 * per_token, (to_free, per_token)  # running on would take ~2990 tokens
    assert llm_engine.active == 0


def test_context_and_limits_are_checked_before_queueing(llm_engine: LLMEngine) -> None:
    huge = "word " * (llm_engine.context_length + 10)
    with pytest.raises(ContextLengthExceeded):
        run(llm_engine, huge, GenParams())
    with pytest.raises(InvalidRequest, match="at most"):
        run(llm_engine, "hi", GenParams(max_tokens=llm_engine.settings.max_tokens_limit + 1))


def test_full_queue_is_busy_not_a_hang(llm_engine: LLMEngine) -> None:
    async def main() -> None:
        params = GenParams(max_tokens=2000, ignore_eos=True)
        streams = [llm_engine.submit([{"role": "user", "content": f"n{i}"}], params)
                   for i in range(capacity(llm_engine.settings))]
        with pytest.raises(Busy) as info:
            llm_engine.submit([{"role": "user", "content": "one more"}], params)
        assert info.value.retry_after >= 1
        for s in streams:
            s.cancel()
        for s in streams:
            with contextlib.suppress(Cancelled):
                async for _ in Reader(s):
                    pass

    asyncio.run(main())
    assert llm_engine.active == 0


def test_the_llm_path_never_imports_torch(llm_engine: LLMEngine) -> None:
    """torch is a multi-GB dependency of the image stack only: serving text must not load it."""
    import subprocess
    import sys

    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from aipc_chat.api.app import create_app\n"
        "from aipc_chat.engines.contract import GenParams\n"
        "from aipc_chat.engines.llm import LLMEngine\n"
        "from aipc_chat.serving.aio import Reader\n"
        "from aipc_chat.settings import Settings\n"
        f"e = LLMEngine(Settings(demo=True), Path({str(llm_engine.model_dir)!r}), 'demo', 'CPU')\n"
        "e.load()\n"
        "async def main():\n"
        "    s = e.submit([{'role': 'user', 'content': 'Hi'}], GenParams(max_tokens=8))\n"
        "    return [x async for x in Reader(s)]\n"
        "assert len(asyncio.run(main())) >= 2\n"
        "e.close()\n"
        "print(sorted(m for m in ('torch', 'optimum', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_each_token_reaches_a_waiting_client_before_the_next_step(demo_models: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """step() holds the GIL for a whole step, so the engine hands each step's text to waiting consumers first."""
    monkeypatch.setattr("aipc_chat.engines.llm_loop.HANDOFF_SECONDS", 2.0)  # the mechanism, not the bound, under test
    monkeypatch.setattr("aipc_chat.engines.llm_loop.HANDOFF_MIN_STEP_SECONDS", 0.0)  # the demo model's steps are short
    settings = Settings(demo=True, models_dir=demo_models.parent, llm_warmup=False)

    class CountingPipe:
        def __init__(self, pipe: object) -> None:
            self.pipe, self.steps = pipe, 0

        def step(self) -> None:
            self.steps += 1
            self.pipe.step()  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.pipe, name)

    counting = CountingPipe(OpenVINOPipelines(settings, demo_models / "llm", "CPU")())
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU", pipelines=lambda: counting)
    engine.load()

    async def main() -> list[int]:
        stream = engine.submit([{"role": "user", "content": "Tell me about laptops."}],
                               GenParams(temperature=0, max_tokens=40, ignore_eos=True))
        lags, made = [], 0
        async for item in Reader(stream):
            if isinstance(item, Delta) and item.tokens:
                made += item.tokens  # one token per step: the step that made this delta's last token
                lags.append(counting.steps - made)  # steps begun since then, before the consumer saw it
        return lags

    try:
        seen = asyncio.run(main())
    finally:
        engine.close()
    assert len(seen) >= 10
    assert all(lag == 0 for lag in seen), str(seen)


@pytest.mark.parametrize("warmup", [True, False])
def test_load_warms_the_pipeline_up_with_one_token(demo_models: Path, monkeypatch: pytest.MonkeyPatch,
                                                    warmup: bool) -> None:
    calls: list[tuple[list[str], list[int]]] = []

    class Recording(ov_genai.ContinuousBatchingPipeline):  # type: ignore[misc]
        def generate(self, prompts: Any, configs: Any, *args: Any) -> Any:
            calls.append((list(prompts), [c.max_new_tokens for c in configs]))
            return super().generate(prompts, configs, *args)

    monkeypatch.setattr(ov_genai, "ContinuousBatchingPipeline", Recording)
    settings = Settings(demo=True, models_dir=demo_models.parent, llm_warmup=warmup)
    built: list[Any] = []

    def pipelines() -> Any:
        built.append(OpenVINOPipelines(settings, demo_models / "llm", "CPU")())
        return built[-1]

    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU", pipelines=pipelines)
    engine.load()
    try:
        assert len(built) == 1 and not built[0].has_non_finished_requests()
        reasoning, content, done, _ = run(engine, "Hi", GenParams(temperature=0, max_tokens=30))
        assert done.completion_tokens > 0
    finally:
        engine.close()
    if warmup:
        assert calls == [([engine.render_prompt([{"role": "user", "content": "Hello"}])], [1])]
    else:
        assert calls == []


def test_a_dead_owner_thread_fails_requests_instead_of_hanging(demo_models: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug of ours in the owner loop (not a pipeline fault): in-flight requests fail, new ones are refused,
    and the engine says failed."""
    engine = LLMEngine(Settings(demo=True, models_dir=demo_models.parent, llm_warmup=False), demo_models / "llm",
                       "demo", "CPU")
    engine.load()

    def broken(self: BatchLoop, batch: object) -> None:
        raise RuntimeError("a bug in the owner loop")

    monkeypatch.setattr(BatchLoop, "_detokenize", broken)
    try:
        async def main() -> None:
            stream = engine.submit([{"role": "user", "content": "Hi"}], GenParams(max_tokens=20))
            await asyncio.wait_for(collect(stream), timeout=30)

        with pytest.raises(EngineFailure, match="restart the server"):
            asyncio.run(main())
        health = engine.health()
        assert health.state == "failed" and "a bug in the owner loop" in (health.error or "")
        with pytest.raises(NotReady, match="restart the server"):
            engine.submit([{"role": "user", "content": "Hi again"}], GenParams())
    finally:
        engine.close()


def test_the_byte_level_vocabulary_decodes_by_table(llm_engine: LLMEngine) -> None:
    assert llm_engine._table_decode is not None  # checked against openvino-tokenizers at load
    ids = llm_engine.encode("Gravity pulls — naïve café ✓ 你好 <think>\nok</think>\n\n")
    assert llm_engine.decode(ids) == str(llm_engine._tokenizer.decode(ids))


def test_values_that_vanish_in_float32_are_a_400_and_the_engine_goes_on(llm_engine: LLMEngine) -> None:
    """1e-100 passes `> 0` in Python but is 0 to the pipeline, which refuses it: found by the schema fuzzer."""
    with pytest.raises(InvalidRequest, match="repetition_penalty") as err:
        llm_engine.submit([{"role": "user", "content": "Hi"}], GenParams(repetition_penalty=1e-100))
    assert err.value.param == "repetition_penalty"
    with pytest.raises(InvalidRequest, match="top_p") as err:
        llm_engine.submit([{"role": "user", "content": "Hi"}], GenParams(temperature=1.0, top_p=1e-60))
    assert err.value.param == "top_p"
    # a vanishing temperature is greedy decoding, not an error
    _, content, done, _ = run(llm_engine, "Hi", GenParams(temperature=1e-50, max_tokens=20))
    assert done.completion_tokens > 0


def test_a_lone_request_does_not_wait_out_the_admission_window(demo_models: Path) -> None:
    """A window of a minute: a lone request that waited it out would start a minute late (a wide margin, not a
    speed check)."""
    settings = Settings(demo=True, models_dir=demo_models.parent).model_copy(  # past the setting's bound, on purpose
        update={"batch_window_ms": 60_000.0})
    engine = LLMEngine(settings, demo_models / "llm", "demo", "CPU")
    engine.load()
    try:
        _, _, done, _ = run(engine, "Hi", GenParams(max_tokens=4))
    finally:
        engine.close()
    assert done.timing.started is not None
    assert done.timing.started - done.timing.queued < 30


def test_a_request_on_its_way_starts_in_the_same_step(llm_engine: LLMEngine) -> None:
    """Woken by one request while another is announced, the owner waits for it: both prefill in the first step."""
    arrivals = llm_engine.arrivals

    def submit(arrival: object, text: str) -> LLMStream:
        return llm_engine.submit([{"role": "user", "content": text}], GenParams(max_tokens=4),
                                 arrival)  # type: ignore[arg-type]

    async def main() -> tuple[Done, Done]:
        first, second = arrivals.arrive(), arrivals.arrive()
        a = await asyncio.to_thread(submit, first, "one")
        await asyncio.sleep(0.02)
        b = await asyncio.to_thread(submit, second, "two")
        (*_, done_a, _), (*_, done_b, _) = await asyncio.gather(collect(a), collect(b))
        return done_a, done_b

    done_a, done_b = asyncio.run(main())
    assert arrivals.count == 0
    assert done_a.timing.started is not None and done_b.timing.started is not None
    assert done_a.timing.first_token is not None
    assert done_a.timing.started >= done_b.timing.queued  # the first waited for the second...
    assert done_b.timing.started < done_a.timing.first_token  # ...and they shared the first step
