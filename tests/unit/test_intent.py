"""The explicit-picture rule against the labelled set kept in the repo, and the subject it extracts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aipc_chat.intent import about_subject, asks_for_picture, picture_subject, subject_words

SET = Path(__file__).resolve().parents[1] / "data" / "picture_requests.jsonl"
ROWS = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_labelled_set_is_big_and_varied() -> None:
    labels = [r["label"] for r in ROWS]
    assert len(ROWS) >= 60 and {labels.count(k) >= 5 for k in ("explicit", "implicit", "plain", "trap")} == {True}


@pytest.mark.parametrize("row", [r for r in ROWS if r["label"] != "implicit"], ids=lambda r: r["message"][:40])
def test_explicit_asks_and_nothing_else(row: dict[str, str]) -> None:
    assert asks_for_picture(row["message"]) is (row["label"] == "explicit")


@pytest.mark.parametrize(("message", "subject"), [
    ("Draw a cat sitting on a windowsill", "a cat sitting on a windowsill"),
    ("Paint me a field of sunflowers, please.", "a field of sunflowers"),
    ("Show me a photo of the Eiffel Tower at dusk. Thanks!", "the Eiffel Tower at dusk"),
    ("Tell me about Mars and draw a picture of its surface.", "its surface"),
    ("I want a picture", None),
    ("What is the capital of France?", None),
])
def test_the_subject_of_an_ask(message: str, subject: str | None) -> None:
    assert picture_subject(message) == subject


@pytest.mark.parametrize(("subject", "words"), [
    ("a cat sitting on a windowsill", {"cat", "sit"}),
    ("two red foxes in the snow", {"red", "fox"}),
    ("a lighthouse at dusk", {"lighthous"}),
    ("puppies playing", {"puppi", "play"}),
    ("a bowl of ripe apples", {"bowl"}),
    ("a tall building", {"tall", "build"}),
    ("of a red ring", {"red", "ring"}),
    ("a an the", set()),
])
def test_the_words_of_a_subject(subject: str, words: set[str]) -> None:
    assert subject_words(subject) == words


def test_a_prompt_is_about_the_subject_when_it_names_its_head_phrase() -> None:
    assert about_subject("a fluffy cat on a sill, soft light", "a cat sitting on a windowsill")
    assert about_subject("Cats napping in the sun", "a cat sitting on a windowsill")  # stemmed: cats is cat
    # what the real model once wrote for "Draw a cat sitting on a windowsill": the setting, not the cat
    assert not about_subject("a light reflecting off a windowsill", "a cat sitting on a windowsill")
    assert not about_subject("a light street at dusk", "a cat sitting on a windowsill")
    assert not about_subject("a catalogue of lamps", "a cat")  # a shared prefix is not a shared word
    assert about_subject("a majestic building at dusk", "a tall building")  # -ing nouns are words too
    assert about_subject("anything", "a an the")  # nothing to compare: the model's prompt stands
