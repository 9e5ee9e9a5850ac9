"""``GET /health`` (the process is up) and ``GET /ready`` (every model is loaded)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from aipc_chat import __version__
from aipc_chat.api.deps import get_runtime
from aipc_chat.runtime import Runtime, all_ready

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}


@router.get("/ready")
async def ready(runtime: Annotated[Runtime, Depends(get_runtime)]) -> JSONResponse:
    """200 when every model is loaded; 503 with what is still loading (or failed) otherwise."""
    models = await asyncio.to_thread(runtime.describe)  # remote engines are asked over the network
    ready = all_ready(models)
    return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)
