"""System and developer prompts (package files, overridable by settings) and the history window for /chat."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aipc_chat.history import Message


def _package_text(name: str) -> str:
    return resources.files("aipc_chat.prompt_texts").joinpath(name).read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class Prompts:
    """The texts the orchestrator puts around a user's message."""

    system: str
    image_auto: str
    image_always: str

    @classmethod
    def load(cls, system_file: Path | None = None) -> Prompts:
        """The package's prompts; ``system_file`` replaces the system prompt."""
        system = system_file.read_text(encoding="utf-8").strip() if system_file else _package_text("system.md")
        return cls(system, _package_text("image_auto.md"), _package_text("image_always.md"))

    def messages(self, history: list[Message], message: str, *, image_auto: bool) -> list[dict[str, str]]:
        """The system prompt (with the image instructions in ``auto``), the earlier exchanges (answers only, never
        reasoning), the new message. One system message: many chat templates take no second one."""
        system = f"{self.system}\n\n{self.image_auto}" if image_auto else self.system
        out = [{"role": "system", "content": system}]
        out += [{"role": m.role, "content": m.content} for m in history]
        out.append({"role": "user", "content": message})
        return out

    def image_request(self, message: str) -> list[dict[str, str]]:
        """The messages that ask the LLM for an image prompt (image "always")."""
        return [{"role": "user", "content": self.image_always.replace("{message}", message)}]


def window(history: list[Message], exchanges: int) -> list[Message]:
    """The last ``exchanges`` user/assistant pairs."""
    return history[-2 * exchanges :] if exchanges > 0 else []


def fit_to_context(build: Callable[[list[Message]], list[dict[str, str]]], history: list[Message],
                   count: Callable[[list[dict[str, str]]], int], budget: int) -> list[dict[str, str]]:
    """Drop the oldest exchanges until the prompt takes at most ``budget`` tokens (the new message always stays)."""
    kept = list(history)
    messages = build(kept)
    while kept and count(messages) > budget:
        kept = kept[2:]
        messages = build(kept)
    return messages
