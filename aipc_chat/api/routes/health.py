"""``GET /health`` (the process is up) and ``GET /ready`` (every model is loaded)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aipc_chat import __version__
from aipc_chat.api.deps import RuntimeDep
from aipc_chat.runtime import all_ready, retry_after, stores_ok

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}


@router.get("/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """200 while every model serves or loads on demand (``ready``, ``unloaded``) and the shared database and object
    storage (where used) answer; else 503 with each model's state (``loading``, ``recovering``, ``failed``, ...) and,
    while a model is on its way back, Retry-After."""
    models = await asyncio.to_thread(runtime.describe)  # remote engines are asked over the network
    storage = await asyncio.to_thread(runtime.storage)
    body = {"models": models, "storage": storage, "memory": runtime.memory()}
    if all_ready(models) and stores_ok(storage):
        return JSONResponse({"ready": True, **body})
    wait = retry_after(models)
    return JSONResponse({"ready": False, **body}, status_code=503,
                        headers={"Retry-After": str(wait)} if wait is not None else None)
