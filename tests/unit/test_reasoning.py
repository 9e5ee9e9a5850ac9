"""The <think> splitter must give the same split whatever the chunking."""

from __future__ import annotations

import pytest

from aipc_chat.reasoning import ReasoningSplitter, StopMatcher, strip_reasoning

REPLY = "Let me think.\nThe user greets me.\n</think>\n\nHello! How can I help?"


def split(chunks: list[str], *, in_think: bool) -> tuple[str, str]:
    s = ReasoningSplitter(in_think=in_think)
    parts = [s.feed(c) for c in chunks] + [s.finish()]
    reasoning = "".join(p[0] for p in parts)
    content = "".join(p[1] for p in parts)
    assert (reasoning, content) == (s.reasoning, s.content)
    return reasoning, content


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 100])
def test_prompt_opened_think_split_any_chunking(size: int) -> None:
    chunks = [REPLY[i : i + size] for i in range(0, len(REPLY), size)]
    reasoning, content = split(chunks, in_think=True)
    assert reasoning == "Let me think.\nThe user greets me."  # what a whole reply's reasoning is: no blank ends
    assert content == "Hello! How can I help?"


@pytest.mark.parametrize("size", [1, 4, 100])
def test_model_opened_think(size: int) -> None:
    text = "<think>\nhmm\n</think>\n\nAnswer <think> stays"
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    assert split(chunks, in_think=False) == ("hmm", "Answer <think> stays")


def test_no_think_block_is_all_content() -> None:
    assert split(["Just ", "an answer."], in_think=False) == ("", "Just an answer.")


def test_unclosed_think_is_all_reasoning() -> None:
    assert split(["still thinking </thi"], in_think=True) == ("still thinking </thi", "")


def test_content_holding_partial_tag_at_start_is_flushed() -> None:
    assert split(["<thi"], in_think=False) == ("", "<thi")


def test_strip_reasoning() -> None:
    assert strip_reasoning("<think>a</think>\n\nB") == "B"
    assert strip_reasoning("a</think>B") == "B"
    assert strip_reasoning("plain") == "plain"
    assert strip_reasoning("<think>never closed") == ""


def test_a_model_that_does_not_reason_keeps_everything_as_answer() -> None:
    splitter = ReasoningSplitter(in_think=False, tags=False)
    parts = [splitter.feed(chunk) for chunk in ("  <thi", "nk>not a thought</think> ", "answer")]
    assert "".join(r for r, _ in parts) == "" and splitter.reasoning == ""
    assert splitter.content + splitter.finish()[1] == "<think>not a thought</think> answer"


def test_which_models_reason() -> None:
    from aipc_chat.engines.llm import think_tags

    assert think_tags("...{{'<｜Assistant｜><think>\\n'}}", [1, 2, 3])  # DeepSeek-R1 opens the block in its template
    assert think_tags("{{ message['content'] }}", [151648])  # <think> is one token of the vocabulary
    assert not think_tags("<|im_start|>{{ message['content'] }}<|im_end|>", [27, 26865, 29])  # SmolLM2


@pytest.mark.parametrize("chunks", [["Hello NPU world"], ["Hello N", "PU world"], ["Hel", "lo ", "N", "P", "U!"]])
def test_a_stop_string_ends_the_answer_across_chunks(chunks: list[str]) -> None:
    stopper = StopMatcher(("NPU",))
    out = "".join(stopper.feed(c) for c in chunks) + stopper.finish()
    assert out == "Hello " and stopper.hit


def test_a_partial_stop_string_at_the_end_is_sent() -> None:
    stopper = StopMatcher(("NPU", "stop here"))
    out = stopper.feed("an N") + stopper.feed("P and stop") + stopper.finish()
    assert out == "an NP and stop" and not stopper.hit
    assert StopMatcher(("b", "ab")).feed("xab") == "x"  # the earliest match wins


@pytest.mark.parametrize("size", [1, 3, 7, 100])
def test_a_stray_close_tag_never_reaches_the_answer(size: int) -> None:
    """A small model may close its think block twice, or write the tag after think: false closed it empty."""
    text = "thinking</think>\n\nThe answer</think> goes on</think>"
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    assert split(chunks, in_think=True) == ("thinking", "The answer goes on")
    assert split(["</think>\n\n", "</think>Hi ", "</thi", "nk>there"], in_think=True) == ("", "Hi there")
    assert split(["</think>\n\n</th", "ink>\n\nAnswer"], in_think=True) == ("", "Answer")  # no blank start


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_reasoning_streamed_is_the_reasoning_whole(size: int) -> None:
    """Blank lines inside the reasoning stay; around it they go, however the text was chunked."""
    text = "\n\nFirst thought.\n\nSecond thought.\n\n</think>\n\nAnswer"
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    reasoning, _ = split(chunks, in_think=True)
    assert reasoning == "First thought.\n\nSecond thought." == reasoning.strip()
