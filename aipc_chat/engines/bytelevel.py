"""A pure-Python decoder for byte-level BPE vocabularies (GPT-2, Qwen2, DeepSeek-R1-Distill-Qwen).

openvino-tokenizers' detokenizer is an OpenVINO model: right after an LLM step its inference costs ~0.3 ms (its
executor threads have to wake up), where joining a few table entries costs microseconds. Byte-level BPE makes
decoding a lookup: every token is a fixed byte string. ``ByteLevelDecoder.load`` builds the table from
``tokenizer.json`` and checks it against the model's own detokenizer; anything unusual (another decoder, a
normalizer that changes the text back, a mismatch) means it is not used and the engine keeps openvino's.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_SEQUENCES = 256  # random multi-token sequences compared with the reference decoder at load


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's (and CLIP's) reversible byte -> printable character map, in byte order; byte-level BPE
    vocabularies are written in these characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


class ByteLevelDecoder:
    """``decode(ids)`` for a byte-level BPE vocabulary, skipping special tokens as openvino-genai's decode does."""

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._size = len(table)

    def __call__(self, ids: Sequence[int]) -> str:
        table, size = self._table, self._size
        return b"".join(table[i] if 0 <= i < size else b"" for i in ids).decode("utf-8", errors="replace")

    @classmethod
    def from_tokenizer_json(cls, path: Path) -> ByteLevelDecoder | None:
        """The decoder for this ``tokenizer.json``, or None when it is not a plain byte-level BPE."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        decoder = data.get("decoder") or {}
        model = data.get("model") or {}
        if decoder.get("type") != "ByteLevel" or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            return None
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        added = {int(a["id"]): a for a in data.get("added_tokens") or []}
        size = 1 + max([*model["vocab"].values(), *added], default=-1)
        table = [b""] * size
        try:
            for token, i in model["vocab"].items():
                if i not in added:  # added tokens decode as their content (or not at all), below
                    table[i] = bytes(byte_of[c] for c in token)
        except KeyError:  # a character outside the byte alphabet: not what this decoder understands
            return None
        for i, token in added.items():
            table[i] = b"" if token.get("special") else str(token["content"]).encode("utf-8")
        return cls(table)

    @classmethod
    def load(cls, model_dir: Path, reference: Callable[[list[list[int]]], list[str]],
             vocab_size: int | None = None) -> ByteLevelDecoder | None:
        """The decoder for the model in ``model_dir`` if it agrees with ``reference`` (a batched decode), else None.

        Checked: every id alone, and ``CHECK_SEQUENCES`` random sequences of ids across the whole vocabulary. Where
        a sequence is not valid UTF-8 the two may differ in how many U+FFFD replace it (this decoder follows
        Python's, i.e. Unicode's "maximal subpart" practice; openvino-tokenizers replaces per lead byte): text is
        compared with runs of U+FFFD made one.
        """
        decoder = cls.from_tokenizer_json(model_dir / "tokenizer.json")
        if decoder is None:
            return None
        vocab_size = vocab_size or decoder._size
        rng = random.Random(0)
        singles = [[i] for i in range(vocab_size)]
        sequences = [[rng.randrange(vocab_size) for _ in range(rng.randint(2, 12))] for _ in range(CHECK_SEQUENCES)]
        cases = singles + sequences
        expected = reference(cases)
        for ids, text in zip(cases, expected, strict=True):
            if _one_replacement(decoder(ids)) != _one_replacement(text):
                log.info("byte-level table disagrees with the model's detokenizer on %s (%r vs %r): not used",
                         ids, decoder(ids), text)
                return None
        return decoder


def _one_replacement(text: str) -> str:
    return re.sub("\ufffd+", "\ufffd", text)
