"""Incremental detokenizing: text deltas from a growing token list, each as soon as it is final."""

from __future__ import annotations

from collections.abc import Callable


class IncrementalDetokenizer:
    """Text deltas from a growing token list, emitted as soon as they are final.

    Decodes a short window (a few tokens of context, then the new ones) and gives the text that window adds, holding
    back only an incomplete UTF-8 sequence (a trailing U+FFFD). openvino-genai's TextStreamer waits a few tokens
    before it prints, which costs a real model's first token ~100 ms of TTFT; this waits for nothing it need not.
    """

    CONTEXT = 5

    def __init__(self, decode: Callable[[list[int]], str], context: list[int]) -> None:
        self._decode = decode
        self._ids = list(context[-self.CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, ids: list[int]) -> str:
        """Add tokens; return the text they complete (maybe empty)."""
        before, after = self.extend(ids)
        return self.take(self._decode(before), self._decode(after))

    def extend(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """Add tokens; return the two windows ``take`` needs decoded (batch them with other streams')."""
        self._ids.extend(ids)
        return self._ids[self._prefix : self._read], self._ids[self._prefix :]

    def take(self, before: str, after: str) -> str:
        """Given the texts of ``extend``'s windows, return the new final text (maybe empty)."""
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 4 * self.CONTEXT:  # keep the window short: decoding stays O(1) per step
            drop = self._prefix - self.CONTEXT
            self._ids, self._prefix, self._read = self._ids[drop:], self._prefix - drop, self._read - drop
        return after[len(before) :]
