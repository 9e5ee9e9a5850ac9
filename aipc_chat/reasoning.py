"""Split a DeepSeek-R1 reply into its ``<think>`` reasoning and its answer, incrementally, as text streams in."""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag`` (a tag split across chunks)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Feed text chunks; get back (reasoning, content) deltas. Tags never leak into either part.

    ``in_think`` starts true when the chat template itself opened ``<think>`` in the prompt (DeepSeek-R1's does).
    Otherwise a ``<think>`` at the very start of the reply opens the block; one later in the text is content, but a
    stray ``</think>`` after the block has closed (a small model may write a second) is dropped. With ``tags=False``
    (a model that does not reason) everything is content. The reasoning streams without the blank lines around it,
    so streamed and whole replies carry the same reasoning, byte for byte.
    """

    def __init__(self, *, in_think: bool, tags: bool = True) -> None:
        self.in_think = in_think
        self.tags = tags  # False for a model that does not reason: a <think> it writes is answer text
        self._at_start = True  # before any non-blank content: where an opening <think> may appear
        self._held = ""
        self._began = False  # some reasoning text has been sent (leading blank lines are dropped)
        self._blank = ""  # reasoning's trailing whitespace, held until more reasoning follows
        self.reasoning = ""
        self.content = ""

    def _reason(self, text: str, *, ends: bool) -> str:
        """Reasoning text to send: no leading blanks, and trailing ones only once more reasoning follows."""
        if not self._began:
            text = text.lstrip()
            if not text:
                return ""
            self._began = True
        text = self._blank + text
        kept = text.rstrip()
        self._blank = "" if ends else text[len(kept):]
        return kept

    def feed(self, text: str) -> tuple[str, str]:
        """Consume a chunk; return the reasoning and content it completes."""
        buf = self._held + text
        self._held = ""
        reasoning, content = [], []
        while buf:
            if self.in_think:
                idx = buf.find(THINK_CLOSE)
                if idx < 0:
                    keep = partial_tag_suffix(buf, THINK_CLOSE)
                    reasoning.append(self._reason(buf[: len(buf) - keep], ends=False))
                    self._held = buf[len(buf) - keep :]
                    break
                reasoning.append(self._reason(buf[:idx], ends=True))
                buf = buf[idx + len(THINK_CLOSE) :]
                self.in_think = False
                self._at_start = True
                continue
            if self._at_start:
                rest = self._start_of_answer(buf)
                if rest is None:
                    break
                buf = rest
                if self.in_think or self._at_start:
                    continue
            if self.tags:  # a stray close tag in the answer is dropped (one split across chunks is held)
                buf = buf.replace(THINK_CLOSE, "")
                keep = partial_tag_suffix(buf, THINK_CLOSE)
                self._held = buf[len(buf) - keep :]
                buf = buf[: len(buf) - keep]
            content.append(buf)
            break
        r, c = "".join(reasoning), "".join(content)
        self.reasoning += r
        self.content += c
        return r, c

    def _start_of_answer(self, buf: str) -> str | None:
        """What is left of ``buf`` once the answer's start is settled, or None to wait for more text: blank lines
        are dropped, a ``<think>`` opens the block, a stray ``</think>`` is dropped."""
        stripped = buf.lstrip()
        if not stripped:
            return None  # only whitespace so far: answers do not start with blank lines
        if self.tags:
            for tag in (THINK_OPEN, THINK_CLOSE):
                if stripped.startswith(tag):
                    self.in_think = tag == THINK_OPEN
                    return stripped[len(tag):]
                if tag.startswith(stripped):
                    self._held = stripped  # maybe the start of a tag: wait for more text
                    return None
        self._at_start = False
        return stripped

    def finish(self) -> tuple[str, str]:
        """Flush what was held back at the end of the reply."""
        held, self._held = self._held, ""
        if self.in_think:
            text = self._reason(held, ends=True)
            self.reasoning += text
            return text, ""
        if not held:
            return "", ""
        self.content += held
        return "", held


class StopMatcher:
    """Stop strings applied to the answer only (a reasoning model's think block may say them freely): feed answer
    chunks, get back what may be sent; once a stop string appears, the answer ends before it."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.hit = False
        self._held = ""

    def feed(self, text: str) -> str:
        """What of ``text`` can be sent now (a possible start of a stop string is held back)."""
        if self.hit or not text:
            return ""
        buf = self._held + text
        found = [i for i in (buf.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.hit, self._held = True, ""
            return buf[: min(found)]
        keep = max(partial_tag_suffix(buf, stop) for stop in self.stops)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """What was held back, at the end of the reply."""
        held, self._held = ("" if self.hit else self._held), ""
        return held


def strip_reasoning(text: str) -> str:
    """The answer part of a full reply: what is fed back into later prompts (never the reasoning)."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[-1].strip()
    return "" if text.lstrip().startswith(THINK_OPEN) else text.strip()
