"""Incremental detokenizing: every character exactly once, incomplete UTF-8 held back, nothing else waits."""

from __future__ import annotations

import pytest

from aipc_chat.engines.detokenize import IncrementalDetokenizer


def byte_decode(ids: list[int]) -> str:
    """A byte-level tokenizer: one token per byte (multi-byte characters span tokens)."""
    return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_deltas_add_up_to_the_text(step: int) -> None:
    text = "Hé said: ✓ done — naïve café. " * 8
    ids = list(text.encode())
    det = IncrementalDetokenizer(byte_decode, list(b"prompt "))
    deltas = [det.push(ids[i : i + step]) for i in range(0, len(ids), step)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_ascii_comes_out_at_once_and_a_split_character_waits() -> None:
    det = IncrementalDetokenizer(byte_decode, [])
    assert det.push(list(b"Hi")) == "Hi"
    check = "✓".encode()
    assert det.push([check[0]]) == ""
    assert det.push([check[1]]) == ""
    assert det.push([check[2]]) == "✓"
