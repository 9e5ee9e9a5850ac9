"""The byte-level BPE table decoder: built from tokenizer.json, used only where it agrees with the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aipc_chat.engines.bytelevel import ByteLevelDecoder, bytes_to_unicode

B2U = bytes_to_unicode()


def token(raw: bytes) -> str:
    return "".join(B2U[b] for b in raw)


def write_tokenizer(folder: Path, decoder_type: str = "ByteLevel") -> Path:
    vocab = {token(bytes([b])): b for b in range(256)}
    vocab.update({token(b"Hello"): 256, token(" wörld".encode()): 257,
                  token("✓".encode()[:2]): 258, "<｜end▁of▁sentence｜>": 259})
    data = {
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
        "decoder": {"type": decoder_type},
        "added_tokens": [{"id": 259, "content": "<｜end▁of▁sentence｜>", "special": True},
                         {"id": 260, "content": "<think>", "special": False}],
    }
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_the_byte_alphabet_is_a_bijection() -> None:
    assert sorted(B2U) == list(range(256)) and len(set(B2U.values())) == 256
    assert B2U[ord("A")] == "A" and B2U[ord(" ")] == "Ġ"


def test_tokens_decode_to_their_bytes_special_ones_to_nothing(tmp_path: Path) -> None:
    decode = ByteLevelDecoder.from_tokenizer_json(write_tokenizer(tmp_path) / "tokenizer.json")
    assert decode is not None
    assert decode([256, 257, 260]) == "Hello wörld<think>"
    assert decode([259, 256]) == "Hello"  # special tokens are skipped, as openvino-genai's decode does
    assert decode([258]) == "\ufffd"  # an incomplete character: the incremental detokenizer holds it back
    assert decode([258, 0x93]) == "✓"
    assert decode([99999, 256]) == "Hello"  # ids beyond the vocabulary decode to nothing


def test_other_decoders_are_not_handled(tmp_path: Path) -> None:
    assert ByteLevelDecoder.from_tokenizer_json(write_tokenizer(tmp_path, "Metaspace") / "tokenizer.json") is None
    assert ByteLevelDecoder.from_tokenizer_json(tmp_path / "missing.json") is None


@pytest.mark.parametrize(("mutate", "used"), [
    (lambda text: text, True),
    (lambda text: text.replace("\ufffd\ufffd", "\ufffd"), True),  # replacement counts may differ
    (lambda text: text.replace("Hello", "Hallo"), False),  # a real disagreement: the table is not used
])
def test_load_checks_against_the_reference(tmp_path: Path, mutate: object, used: bool) -> None:
    table = ByteLevelDecoder.from_tokenizer_json(write_tokenizer(tmp_path) / "tokenizer.json")
    assert table is not None

    def reference(batch: list[list[int]]) -> list[str]:
        return [mutate(table(ids)) for ids in batch]  # type: ignore[operator]

    decoder = ByteLevelDecoder.load(tmp_path, reference, vocab_size=261)
    assert (decoder is not None) is used
