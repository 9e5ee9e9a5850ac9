"""Which model a request's ``model`` names, the same way for every API: the served name or an alias (the model's
registry name, its hub repository), with or without Ollama's ``:latest`` tag, in any case."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, overload

from aipc_chat.engines.contract import ImageEngineClient, LLMEngineClient
from aipc_chat.errors import ModelNotFound

if TYPE_CHECKING:
    from aipc_chat.runtime import Runtime

Kind = Literal["llm", "image"]


def bare(name: str) -> str:
    """A name without ``:latest``."""
    return name.removesuffix(":latest")


def tagged(name: str) -> str:
    """A name with a tag (``:latest`` unless it has one), as Ollama lists models."""
    return name if ":" in name.split("/")[-1] else f"{name}:latest"


def names_match(requested: str, names: Iterable[str | None]) -> bool:
    """Whether ``requested`` is one of ``names``, ignoring case, surrounding spaces and a ``:latest`` tag."""
    key = bare(requested.strip().lower())
    return any(name and bare(name.lower()) == key for name in names)


def model_names(runtime: Runtime, kind: Kind | Literal["embedding"]) -> list[str]:
    """The served model's name first, then its aliases (for the embedding model: its folder's names)."""
    if kind == "embedding":
        status, embedder = runtime.embedding_status, runtime.embedding
        folder = embedder.model_dir.name if embedder is not None else ""
        given = [str(status["model"]) if status is not None else "", folder, folder.removesuffix("-ov")]
        return list(dict.fromkeys(name for name in given if name))
    engine = runtime.llm if kind == "llm" else runtime.image
    choice = runtime.status[kind].choice
    names = [engine.model_name if engine is not None and engine.model_name else choice.name, choice.name,
             choice.repo]
    return list(dict.fromkeys(name for name in names if name))


@overload
def resolve_model(runtime: Runtime, kind: Literal["llm"], requested: str | None) -> LLMEngineClient: ...
@overload
def resolve_model(runtime: Runtime, kind: Literal["image"], requested: str | None) -> ImageEngineClient: ...
def resolve_model(runtime: Runtime, kind: Kind, requested: str | None) -> LLMEngineClient | ImageEngineClient:
    """The engine serving ``kind`` (NotReady while it cannot serve), checking that ``requested`` (None: any)
    names it: 404 ``model_not_found`` otherwise."""
    engine: LLMEngineClient | ImageEngineClient = runtime.require_llm() if kind == "llm" else runtime.require_image()
    names = model_names(runtime, kind)
    if requested is not None and not names_match(requested, names):
        what = "model" if kind == "llm" else "image model"
        raise ModelNotFound(f"The {what} '{requested}' is not served here; this server serves '{names[0]}'.",
                            param="model")
    return engine
