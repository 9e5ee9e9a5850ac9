"""``POST /v1/embeddings``: OpenAI's embeddings over the embedding model (``AIPC_EMBEDDING_PATH``)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter

from aipc_chat.api.deps import RuntimeDep
from aipc_chat.api.schemas.openai import EmbeddingRequest
from aipc_chat.serving.embeddings import embed

router = APIRouter(tags=["openai"])


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """One embedding per input, as floats or (``encoding_format: base64``) little-endian float32 bytes."""
    done = await embed(runtime, body.model, body.input, dimensions=body.dimensions, keep_alive=body.keep_alive)

    def encoded(vector: list[float]) -> list[float] | str:
        if body.encoding_format == "float":
            return vector
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()

    return {"object": "list", "model": done.model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(done.vectors)],
            "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens}}
