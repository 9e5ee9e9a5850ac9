"""OpenAI ``POST /v1/images/generations`` and ``POST /v1/images/edits``, job status, and the stored images at
``GET /images/{name}.png`` (from the data folder, or from an S3 bucket: streamed through the server, or a redirect
to a presigned URL)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from aipc_chat.api.deps import CallerDep, RuntimeDep, SettingsDep, get_runtime, get_settings
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.images import (
    MAX_PROMPT_CHARS,
    SIZE_PATTERN,
    ImageGenerationRequest,
    decode_image,
    parse_size,
)
from aipc_chat.engines.contract import ImageEngineClient, ImageJob, ImageParams
from aipc_chat.engines.store import NAME_RE, ImageStore, make_image_store
from aipc_chat.errors import InvalidRequest, NotFound, UnsupportedParameter
from aipc_chat.serving import IMAGE_SEED_MAX, resolve_model, resolve_seed, submit_image
from aipc_chat.serving.aio import wait_job
from aipc_chat.serving.params import RANDOM_SEED
from aipc_chat.settings import Settings

router = APIRouter(tags=["images"])


CACHED = {"Cache-Control": "private, max-age=31536000"}  # a name is never reused for another picture


def image_store(request: Request) -> ImageStore:
    """The image engine's store; while there is no engine (loading, failed, none served), one made from the
    settings, kept on the app (building a boto3 client takes a while)."""
    engine = get_runtime(request).image
    if engine is not None:
        return engine.store
    store: ImageStore | None = getattr(request.app.state, "image_store", None)
    if store is None:
        store = request.app.state.image_store = make_image_store(get_settings(request))
    return store


def image_url(request: Request, name: str) -> str:
    """The absolute URL of a stored image: a presigned storage URL (S3 with AIPC_IMAGE_URL_EXPIRY > 0), else this
    server's ``/images/NAME.png``."""
    return image_store(request).link(name) or str(request.url_for("get_image", name=f"{name}.png"))


@router.post("/v1/images/generations")
async def generate_images(body: ImageGenerationRequest, request: Request, runtime: RuntimeDep,
                          settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Generate images; ``url`` entries already serve the PNG, ``b64_json`` carries the same PNG bytes."""
    engine = resolve_model(runtime, "image", body.model)
    return await _answer(engine, body.to_params(), body.response_format, request, settings, caller)


async def _answer(engine: ImageEngineClient, params: ImageParams, response_format: str, request: Request,
                  settings: Settings, caller: str | None) -> dict[str, Any]:
    job = await submit_image(engine, params, owner=caller)
    await unless_disconnected(request, wait_job(job, settings.request_timeout))
    if response_format == "url":
        data = [{"url": image_url(request, name), "revised_prompt": params.prompt} for name in job.images]
    else:
        data = [{"b64_json": png, "revised_prompt": params.prompt}
                for png in await asyncio.to_thread(base64_pngs, engine, job.images)]
    return {"created": int(time.time()), "data": data, "seeds": job.seeds}


def base64_pngs(engine: ImageEngineClient, names: list[str]) -> list[str]:
    """Stored pictures as base64 (reading and encoding megabytes: call it in a worker thread)."""
    return [base64.b64encode(engine.store.read(name) or b"").decode() for name in names]


@router.post("/v1/images/edits")
async def edit_images(  # OpenAI's multipart form, field by field
    request: Request, runtime: RuntimeDep, settings: SettingsDep, caller: CallerDep,
    prompt: Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)],
    image: Annotated[list[UploadFile] | None, File()] = None,
    images: Annotated[list[UploadFile] | None, File(alias="image[]")] = None,
    mask: Annotated[UploadFile | None, File()] = None,
    model: Annotated[str | None, Form(max_length=256)] = None,
    n: Annotated[int, Form(ge=1, le=16)] = 1,
    size: Annotated[str, Form(pattern=SIZE_PATTERN)] = "512x512",
    response_format: Annotated[Literal["url", "b64_json"], Form()] = "url",
    negative_prompt: Annotated[str, Form(max_length=MAX_PROMPT_CHARS)] = "",
    strength: Annotated[float, Form(ge=0, le=1)] = 0.75,
    num_inference_steps: Annotated[int, Form(ge=1, le=500)] = 20,
    guidance_scale: Annotated[float, Form(ge=0, le=30)] = 7.5,
    seed: Annotated[int | None, Form(ge=RANDOM_SEED, le=IMAGE_SEED_MAX)] = None,
) -> dict[str, Any]:
    """Image to image from one uploaded picture (``image`` or ``image[]``) and a prompt; ``strength`` (an
    extension: how much of the picture is redrawn) as A1111's denoising strength."""
    engine = resolve_model(runtime, "image", model)
    uploads = [*(image or []), *(images or [])]
    if len(uploads) != 1:
        raise InvalidRequest("Send exactly one image (image or image[]).", param="image")
    if mask is not None:
        raise UnsupportedParameter("Masks (inpainting) are not supported; send the image only.", param="mask")
    width, height = parse_size(size)
    data = await uploads[0].read()
    init = await asyncio.to_thread(decode_image, data, width, height, param="image")
    params = ImageParams(prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                         steps=num_inference_steps, guidance_scale=guidance_scale,
                         seed=resolve_seed(seed, IMAGE_SEED_MAX), n=n, init_image=init, strength=strength)
    return await _answer(engine, params, response_format, request, settings, caller)


async def _job_or_404(engine: ImageEngineClient, job_id: str, caller: str | None) -> ImageJob:
    """The job, if the caller may see it (another user's job is as unknown as a missing one). In a worker thread:
    in a team, another front end's job is read from the shared database."""
    job = await asyncio.to_thread(engine.get_job, job_id)
    if job is None or (caller is not None and job.owner != caller):
        raise NotFound(f"No image job '{job_id}'.", param="id")
    return job


@router.get("/v1/images/jobs/{job_id}")
async def get_job(job_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """State and progress of an image job, with its image URLs once done."""
    job = await _job_or_404(runtime.require_image(), job_id, caller)
    return dict(job.as_dict(lambda name: image_url(request, name)))


@router.delete("/v1/images/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request, runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel a queued or running job."""
    job = await _job_or_404(runtime.require_image(), job_id, caller)
    await asyncio.to_thread(job.cancel)  # another front end's job: a request written to its row
    return dict(job.as_dict(lambda name: image_url(request, name)))


@router.get("/images/{name}", name="get_image", response_class=FileResponse)
async def get_image(name: str, request: Request, settings: SettingsDep) -> Response:
    """A generated PNG; names are unguessable, unknown ones are 404. From S3: the bytes streamed through this server,
    or (AIPC_IMAGE_URL_EXPIRY > 0) a 307 to a fresh presigned URL; a store that does not answer is a 503."""
    key = name.removesuffix(".png") if name.endswith(".png") else ""
    if not NAME_RE.match(key):
        raise NotFound("No such image.")
    store = image_store(request)
    path = store.path(key)
    if path is not None:
        return FileResponse(path, media_type="image/png", headers=CACHED)
    link = store.link(key)  # a fresh presigned URL, valid the whole expiry from now
    if link is not None:  # the store is asked first: an unknown name is our 404, a store that is down our 503
        if not await asyncio.to_thread(store.exists, key):
            raise NotFound("No such image.")
        return RedirectResponse(link, status_code=307, headers={  # cached no longer than the URL stays valid
            "Cache-Control": f"private, max-age={settings.image_url_expiry // 2}"})
    chunks = await asyncio.to_thread(store.open, key)
    if chunks is None:
        raise NotFound("No such image.")
    return StreamingResponse(chunks, media_type="image/png", headers=CACHED)
