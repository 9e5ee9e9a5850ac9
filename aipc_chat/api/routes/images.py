"""OpenAI ``POST /v1/images/generations``, job status, and the stored images at ``GET /images/{name}.png``."""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from aipc_chat.api.deps import CallerDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.images import ImageGenerationRequest
from aipc_chat.engines.contract import ImageEngineClient, ImageJob
from aipc_chat.engines.store import ImageStore
from aipc_chat.errors import ModelNotFound, NotFound

router = APIRouter(tags=["images"])


def image_url(request: Request, name: str) -> str:
    """The absolute URL of a stored image."""
    return str(request.url_for("get_image", name=f"{name}.png"))


@router.post("/v1/images/generations")
async def generate_images(body: ImageGenerationRequest, request: Request, runtime: RuntimeDep,
                          settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Generate images; ``url`` entries already serve the PNG, ``b64_json`` carries the same PNG bytes."""
    engine = runtime.require_image()
    if body.model is not None and body.model != engine.model_name:
        raise ModelNotFound(f"The image model '{body.model}' is not served here; use '{engine.model_name}'.",
                            param="model")
    job = engine.submit(body.to_params(), owner=caller)
    await unless_disconnected(request, job.wait(settings.request_timeout))
    data: list[dict[str, Any]] = []
    for name in job.images:
        if body.response_format == "url":
            data.append({"url": image_url(request, name), "revised_prompt": body.prompt})
        else:
            png = engine.store.read(name) or b""
            data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": body.prompt})
    return {"created": int(time.time()), "data": data, "seeds": job.seeds}


def _job_or_404(engine: ImageEngineClient, job_id: str, caller: str | None) -> ImageJob:
    """The job, if the caller may see it (another user's job is as unknown as a missing one)."""
    job = engine.get_job(job_id)
    if job is None or (caller is not None and job.owner != caller):
        raise NotFound(f"No image job '{job_id}'.", param="id")
    return job


@router.get("/v1/images/jobs/{job_id}")
async def get_job(job_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """State and progress of an image job, with its image URLs once done."""
    job = _job_or_404(runtime.require_image(), job_id, caller)
    return dict(job.as_dict(lambda name: image_url(request, name)))


@router.delete("/v1/images/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel a queued or running job."""
    job = _job_or_404(runtime.require_image(), job_id, caller)
    job.cancel()
    return dict(job.as_dict(lambda name: image_url(request, name)))


@router.get("/images/{name}", name="get_image", response_class=FileResponse)
async def get_image(name: str, runtime: RuntimeDep, settings: SettingsDep) -> FileResponse:
    """A generated PNG; names are unguessable, unknown ones are 404."""
    store = runtime.image.store if runtime.image else ImageStore(settings.data_dir / "images")
    path = store.path(name.removesuffix(".png")) if name.endswith(".png") else None
    if path is None:
        raise NotFound("No such image.")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000"})
