"""Embeddings, the same for every API: which model a request names, texts or token ids in, vectors and counts out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from aipc_chat.errors import InvalidRequest, ModelNotFound
from aipc_chat.serving.models import model_names, names_match
from aipc_chat.serving.streams import SUBMITS

if TYPE_CHECKING:
    from aipc_chat.runtime import Runtime

Inputs = str | list[str] | list[int] | list[list[int]]


@dataclass(frozen=True)
class Embedded:
    """What a request's texts came to."""

    model: str
    vectors: list[list[float]]
    tokens: int
    seconds: float


async def embed(runtime: Runtime, model: str, inputs: Inputs, *, truncate: bool = True,
                dimensions: int | None = None, keep_alive: float | None = None) -> Embedded:
    """Embed ``inputs`` with the embedding model ``model`` names (404 for any other; token ids are decoded with the
    model's own tokenizer first). ``dimensions`` must be the model's own: it has no shorter forms."""
    if runtime.status["llm"].state != "disabled" and names_match(model, model_names(runtime, "llm")):
        raise InvalidRequest(f'"{model}" does not support embeddings (it is the chat model); '
                             + ("ask for the embedding model." if runtime.embedding_status is not None else
                                "set AIPC_EMBEDDING_PATH to serve an embedding model."), param="model")
    if runtime.embedding_status is None:  # as for any model not served here: 404, saying how to serve one
        raise ModelNotFound(f"The embedding model '{model}' is not served here: this server serves no embedding "
                            "model (set AIPC_EMBEDDING_PATH and restart it to serve one).", param="model")
    engine = runtime.require_embedding()
    if not names_match(model, model_names(runtime, "embedding")):
        raise ModelNotFound(f"The embedding model '{model}' is not served here; this server serves "
                            f"'{engine.model_name}'.", param="model")
    if dimensions is not None and dimensions != engine.dimensions:
        raise InvalidRequest(f"{engine.model_name} makes {engine.dimensions}-dimensional embeddings only; "
                             f"dimensions {dimensions} is not available.", param="dimensions")
    if isinstance(inputs, str):
        texts = [inputs]
    elif not inputs:
        return Embedded(engine.model_name, [], 0, 0.0)  # Ollama's answer to input []: no vectors
    elif all(isinstance(item, int) for item in inputs):
        texts = [engine.decode(inputs)]  # type: ignore[arg-type]
    else:
        texts = [item if isinstance(item, str) else engine.decode(item) for item in inputs]  # type: ignore[arg-type]
    t0 = time.perf_counter()
    # its own threads (as LLM submits): requests waiting for the model never take the default pool's few
    vectors, tokens = await asyncio.get_running_loop().run_in_executor(
        SUBMITS, partial(engine.embed, texts, truncate=truncate, keep_alive=keep_alive))
    return Embedded(engine.model_name, vectors, tokens, time.perf_counter() - t0)
