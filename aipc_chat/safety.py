"""Checks between the LLM's image prompt and the diffusion call: a configurable term list."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class SafetyVerdict:
    """Why an image prompt was refused (``term``), or None fields when it passed."""

    allowed: bool
    term: str | None = None


class PromptFilter:
    """Refuses image prompts that contain a blocked term (whole words, any case)."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = [t for t in (t.strip().lower() for t in terms) if t and not t.startswith("#")]
        joined = "|".join(re.escape(t) for t in sorted(self.terms, key=len, reverse=True))
        self._pattern = re.compile(rf"\b({joined})\b", re.IGNORECASE) if self.terms else None

    @classmethod
    def load(cls, path: Path | None = None) -> PromptFilter:
        """The package's term list, or the one at ``path``."""
        if path is not None:
            text = path.read_text(encoding="utf-8")
        else:
            text = resources.files("aipc_chat.prompt_texts").joinpath("blocked_terms.txt").read_text(encoding="utf-8")
        return cls(text.splitlines())

    def check(self, *texts: str) -> SafetyVerdict:
        """Whether these prompt texts may be rendered."""
        if self._pattern is None:
            return SafetyVerdict(True)
        for text in texts:
            found = self._pattern.search(text)
            if found:
                return SafetyVerdict(False, found.group(1).lower())
        return SafetyVerdict(True)
