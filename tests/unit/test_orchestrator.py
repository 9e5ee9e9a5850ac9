"""Every branch of a /chat turn, with scripted fakes for the engines (the real ones are in e2e tests)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from aipc_chat.engines.contract import Delta, Done, GenParams, ImageJob, ImageParams, LLMStream, Timing
from aipc_chat.errors import Busy, EngineFailure
from aipc_chat.history import HistoryStore, Turn
from aipc_chat.orchestrator import (
    IMAGE_PROMPT_REGEX,
    ChatTurnRequest,
    ChatTurnResult,
    Orchestrator,
    TagFilter,
    parse_image_prompt,
)
from aipc_chat.prompts import Prompts
from aipc_chat.safety import PromptFilter


class FakeLLM:
    """Replies from a script, in order; records what it was asked."""

    context_length = 4096
    reasons = True

    def __init__(self) -> None:
        self.script: list[tuple[str, str] | Exception] = []
        self.calls: list[tuple[list[dict[str, str]], GenParams]] = []

    def enqueue(self, *replies: tuple[str, str] | Exception) -> None:
        self.script.extend(replies)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    def submit(self, messages: list[dict[str, str]], params: GenParams, arrival: object = None) -> LLMStream:
        self.calls.append((messages, params))
        reply = self.script.pop(0)
        stream = LLMStream("fake", 10)
        if isinstance(reply, Exception):
            stream.put(reply)
        else:
            reasoning, content = reply
            for i in range(0, len(content), 3):  # in small chunks, as a real stream comes
                stream.put(Delta(reasoning if i == 0 else "", content[i : i + 3], 1))
            stream.put(Done("stop", 10, len(content), Timing()))
        stream.close()
        return stream


class DeletedNames:
    """The store's part the orchestrator uses: what it deleted."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, names: list[str]) -> int:
        self.deleted.extend(names)
        return len(names)


class FakeImages:
    """Finishes (or fails) every job at once."""

    def __init__(self, *, fail: bool = False, busy: bool = False, hang: bool = False) -> None:
        self.fail, self.busy, self.hang = fail, busy, hang
        self.jobs: list[ImageJob] = []
        self.store = DeletedNames()
        self._names = (f"{i:032x}" for i in itertools.count(1))

    def submit(self, params: ImageParams, owner: str | None = None) -> ImageJob:
        if self.busy:
            raise Busy("full")
        job = ImageJob(params, owner=owner, names=[next(self._names) for _ in range(params.n)])
        job.seeds = [params.seed or 1]
        if self.hang:  # still rendering
            job.state = "running"
        elif self.fail:
            job.end("failed", "boom")
        else:
            job.images = list(job.names)
            job.end("done")
        self.jobs.append(job)
        return job


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def history(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "h.sqlite3")


def make(llm: FakeLLM, images: FakeImages, history: HistoryStore, limit: int = 10) -> Orchestrator:
    return Orchestrator(lambda: llm, lambda: images, history, Prompts.load(), PromptFilter(["gore"]),
                        history_limit=limit, max_tokens=512, timeout=30)


def turn(orch: Orchestrator, message: str, **kw: Any) -> tuple[ChatTurnResult, list[str]]:
    async def main() -> tuple[ChatTurnResult, list[str]]:
        names, result = [], None
        async for name, payload in orch.run(ChatTurnRequest(user_id="u", message=message, **kw)):
            names.append(name)
            if name == "done":
                result = payload["result"]
        assert result is not None
        return result, names

    return asyncio.run(main())


TAGGED = 'Here is a fox.\n<image>{"prompt": "a red fox in snow"}</image>'


def test_auto_with_an_image_prompt(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    llm.enqueue(("thinking", TAGGED))
    result, events = turn(make(llm, images, history), "Draw a fox")
    assert result.assistant_response == "Here is a fox." and result.reasoning == "thinking"
    assert result.image_generated and result.image_state == "done"
    assert result.image_prompt is not None and result.image_prompt["prompt"] == "a red fox in snow"
    assert result.image_names == images.jobs[0].names
    assert result.as_dict(lambda n: f"http://h/images/{n}.png")["image_urls"] == [
        f"http://h/images/{images.jobs[0].names[0]}.png"]
    assert result.image_prompt["seed"] == images.jobs[0].seeds[0]
    assert events[-1] == "done" and events.index("image_queued") < events.index("image_done")
    assert "<image>" not in "".join(events)
    params = llm.calls[0][1]
    assert params.tag is not None and params.tag.regex == IMAGE_PROMPT_REGEX
    stored = history.messages("u", "default")
    assert [m.content for m in stored] == ["Draw a fox", "Here is a fox."]
    assert stored[1].image_names == result.image_names and stored[1].reasoning == "thinking"
    assert stored[1].image_prompt == result.image_prompt  # with the seed the image really used
    assert set(result.timings) == {"llm_s", "image_s", "total_s"}  # the model wrote the prompt: no second call


def test_auto_without_an_image_prompt(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    llm.enqueue(("hm", "Just text."))
    result, events = turn(make(llm, images, history), "Hi")
    assert (result.assistant_response, result.image_generated, result.image_prompt) == ("Just text.", False, None)
    assert not images.jobs and "image_queued" not in events


def test_always_asks_for_a_prompt_under_a_bounded_grammar(llm: FakeLLM, images: FakeImages,
                                                        history: HistoryStore) -> None:
    llm.enqueue(("r", "OpenVINO is a toolkit."), ("", '{"prompt": "a toolkit logo"}'))
    result, _ = turn(make(llm, images, history), "What is OpenVINO?", image="always")
    assert result.image_generated and result.image_prompt and result.image_prompt["prompt"] == "a toolkit logo"
    second = llm.calls[1][1]
    assert second.regex == IMAGE_PROMPT_REGEX and second.max_tokens is not None and second.max_tokens <= 256
    # Every model call of the turn is timed and named, inside the total.
    assert set(result.timings) == {"llm_s", "image_prompt_s", "image_s", "total_s"}
    assert sum(v for k, v in result.timings.items() if k != "total_s") <= result.timings["total_s"]


def test_always_falls_back_to_the_users_words(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    llm.enqueue(("r", "Sure."), ("", '{"prompt": "   "}'))
    result, _ = turn(make(llm, images, history), "  a quiet harbour  ", image="always")
    assert result.image_prompt is not None and result.image_prompt["prompt"] == "a quiet harbour"


def test_never_gives_text_only(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    llm.enqueue(("r", TAGGED))
    result, _ = turn(make(llm, images, history), "Draw a fox", image="never")
    assert llm.calls[0][1].tag is None
    assert result.image_prompt is None and not images.jobs and result.assistant_response == "Here is a fox."
    assert all(m["content"] != Prompts.load().image_auto for m in llm.calls[0][0])


def test_filtered_prompt_gives_content_filter_not_an_image(llm: FakeLLM, images: FakeImages,
                                                           history: HistoryStore) -> None:
    llm.enqueue(("r", 'Here.\n<image>{"prompt": "lots of GORE"}</image>'))
    result, events = turn(make(llm, images, history), "Draw something")
    assert result.image_state == "filtered" and result.image_error is not None
    assert result.image_error["code"] == "content_filter" and not images.jobs and "image_error" in events
    assert result.assistant_response == "Here."


def test_image_failure_after_a_good_answer(llm: FakeLLM, history: HistoryStore) -> None:
    llm.enqueue(("r", TAGGED))
    result, _ = turn(make(llm, FakeImages(fail=True), history), "Draw a fox")
    assert result.assistant_response == "Here is a fox." and not result.image_generated
    assert result.image_state == "failed" and result.image_error and result.image_error["code"] == "engine_error"
    assert result.image_names == [] and history.messages("u", "default")[1].image_names == []


def test_busy_image_queue_is_reported_with_the_answer(llm: FakeLLM, history: HistoryStore) -> None:
    llm.enqueue(("r", TAGGED))
    result, _ = turn(make(llm, FakeImages(busy=True), history), "Draw a fox")
    assert result.assistant_response and result.image_error and result.image_error["code"] == "server_busy"


def test_llm_failure_raises_and_stores_nothing(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    llm.enqueue(EngineFailure("broken"))
    with pytest.raises(EngineFailure):
        turn(make(llm, images, history), "Hi")
    assert history.messages("u", "default") == []


def test_no_wait_returns_the_job_and_urls_at_once(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    llm.enqueue(("r", TAGGED))
    result, events = turn(make(llm, images, history), "Draw a fox", wait_for_image=False)
    assert result.image_state == "queued" and result.image_job_id == images.jobs[0].id and result.image_names
    assert "image_done" not in events


@pytest.mark.parametrize(("fail", "state"), [(False, "done"), (True, "failed")])
def test_a_picture_not_waited_for_is_recorded_as_it_ends(llm: FakeLLM, history: HistoryStore, fail: bool,
                                                         state: str) -> None:
    images = FakeImages(fail=fail)
    orch = make(llm, images, history)
    llm.enqueue(("r", TAGGED))

    async def main() -> None:
        async for _ in orch.run(ChatTurnRequest(user_id="u", message="Draw a fox", wait_for_image=False)):
            pass
        await orch.followed()

    asyncio.run(main())
    answer = history.messages("u", "default")[1]
    assert answer.image_state == state
    assert answer.image_names == (images.jobs[0].names if state == "done" else [])


def test_a_picture_in_flight_is_pending_until_it_ends(llm: FakeLLM, history: HistoryStore) -> None:
    """While a picture renders, history says pending and lists no URL; at the next start it is interrupted."""
    llm.enqueue(("r", TAGGED))
    turn(make(llm, FakeImages(hang=True), history), "Draw a fox", wait_for_image=False)
    answer = history.messages("u", "default")[1]
    assert answer.image_state == "pending" and answer.as_dict(str)["image_urls"] == []
    assert history.interrupt_pending() == 1
    answer = history.messages("u", "default")[1]
    assert answer.image_state == "interrupted" and answer.image_names == []


@pytest.mark.parametrize("deleted", [True, False])
def test_a_picture_ending_after_its_conversation_was_deleted_is_deleted(llm: FakeLLM, history: HistoryStore,
                                                                         deleted: bool) -> None:
    images = FakeImages(hang=True)
    llm.enqueue(("r", TAGGED))
    orch = make(llm, images, history)

    async def main() -> None:
        async for _ in orch.run(ChatTurnRequest(user_id="u", message="Draw a fox", wait_for_image=False)):
            pass
        if deleted:
            assert history.delete("u").messages == 2
        job = images.jobs[0]
        job.images = list(job.names)
        job.end("done")
        await orch.followed()

    asyncio.run(main())
    if deleted:
        assert images.store.deleted == images.jobs[0].names and history.messages("u", "default") == []
    else:
        assert images.store.deleted == []
        assert history.messages("u", "default")[1].image_names == images.jobs[0].names


def test_history_window_and_no_reasoning_fed_back(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    for i in range(3):
        history.add_turn("u", "default", Turn(f"question {i}", f"answer {i}", reasoning=f"secret {i}"))
    llm.enqueue(("r", "ok"))
    turn(make(llm, images, history, limit=2), "next")
    sent = [m["content"] for m in llm.calls[0][0] if m["role"] != "system"]
    assert sent == ["question 1", "answer 1", "question 2", "answer 2", "next"]
    assert not any("secret" in m["content"] for m in llm.calls[0][0])


def test_conversations_are_separate(llm: FakeLLM, images: FakeImages, history: HistoryStore) -> None:
    history.add_turn("u", "other", Turn("elsewhere", "there"))
    llm.enqueue(("r", "ok"))
    turn(make(llm, images, history), "here", conversation_id="mine")
    assert "elsewhere" not in [m["content"] for m in llm.calls[0][0]]


@pytest.mark.parametrize("size", [1, 2, 5, 200])
def test_tag_filter_any_chunking(size: int) -> None:
    text = 'Look <b>.\n<image>{"prompt": "x"}</image> after'
    f = TagFilter()
    visible = "".join(f.feed(text[i : i + size]) for i in range(0, len(text), size)) + f.finish()
    assert visible == "Look <b>.\n after"
    assert f.captured == '{"prompt": "x"}'


def test_parse_image_prompt() -> None:
    assert parse_image_prompt('{"prompt": " a cat "}') == "a cat"
    assert parse_image_prompt('{"prompt": ""}') is None
    assert parse_image_prompt("not json") is None
    assert parse_image_prompt(None) is None


def test_a_client_leaving_during_the_image_stops_it(llm: FakeLLM, history: HistoryStore) -> None:
    images = FakeImages(hang=True)
    llm.enqueue(("r", TAGGED))
    orch = make(llm, images, history)

    async def main() -> None:
        events = orch.run(ChatTurnRequest(user_id="u", message="Draw a fox"))
        async for name, _ in events:
            if name == "image_queued":
                break
        await events.aclose()  # what the server does when the client disconnects

    asyncio.run(main())
    assert images.jobs[0].cancelled
    stored = history.messages("u", "default")
    assert stored[1].content == "Here is a fox." and stored[1].image_names == []


def test_an_explicit_ask_is_drawn_when_the_model_writes_no_tag(llm: FakeLLM, images: FakeImages,
                                                                history: HistoryStore) -> None:
    llm.enqueue(("", "Cats are lovely."), ("", '{"prompt": "a cat on a windowsill, soft light"}'))
    result, _ = turn(make(llm, images, history), "Draw a cat sitting on a windowsill")
    assert result.image_generated and result.image_prompt is not None
    assert result.image_prompt["prompt"] == "a cat on a windowsill, soft light"  # the model's, being about it
    assert llm.calls[1][1].regex == IMAGE_PROMPT_REGEX


def test_a_prompt_that_wandered_off_the_ask_gives_way_to_the_asked_subject(llm: FakeLLM, images: FakeImages,
                                                                          history: HistoryStore) -> None:
    llm.enqueue(("", "Sure."), ("", '{"prompt": "a light street at dusk"}'))
    result, _ = turn(make(llm, images, history), "Can you paint a bowl of fruit, please?")
    assert result.image_prompt is not None and result.image_prompt["prompt"] == "a bowl of fruit"


@pytest.mark.parametrize("message", ["What does the word draw mean?", "Don't draw anything, just explain rain.",
                                     "Who painted the Mona Lisa?"])
def test_no_picture_for_what_is_not_an_ask(llm: FakeLLM, images: FakeImages, history: HistoryStore,
                                           message: str) -> None:
    llm.enqueue(("", "An answer."))
    result, _ = turn(make(llm, images, history), message)
    assert not result.image_generated and len(llm.calls) == 1 and not images.jobs


def test_a_model_that_does_not_reason_gives_reasoning_null(llm: FakeLLM, images: FakeImages,
                                                           history: HistoryStore) -> None:
    llm.reasons = False
    llm.enqueue(("", "Paris."))
    result, _ = turn(make(llm, images, history), "Capital of France?", image="never", temperature=0.0, seed=7)
    assert result.reasoning is None and result.as_dict(str)["reasoning"] is None
    assert (llm.calls[0][1].temperature, llm.calls[0][1].seed) == (0.0, 7)
    system = [m for m in llm.calls[0][0] if m["role"] == "system"]
    assert len(system) == 1  # one system message: many chat templates take no second one
