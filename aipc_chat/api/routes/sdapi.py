"""AUTOMATIC1111-compatible endpoints (``/sdapi/v1/...``), as Open WebUI and other A1111 clients call them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from aipc_chat.api.deps import CallerDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.routes.images import base64_pngs
from aipc_chat.api.schemas.images import Img2ImgRequest, Txt2ImgRequest
from aipc_chat.engines.contract import RUNTIME_SCHEDULES, SAMPLERS, ImageEngineClient, ImageParams
from aipc_chat.engines.store import parse_infotext
from aipc_chat.errors import Cancelled, InvalidRequest
from aipc_chat.runtime import Runtime
from aipc_chat.serving import load_only, submit_image
from aipc_chat.serving.aio import wait_job
from aipc_chat.settings import Settings

router = APIRouter(prefix="/sdapi/v1", tags=["automatic1111"])


def _model_entry(engine: ImageEngineClient) -> dict[str, Any]:
    digest = hashlib.sha256(str(engine.model_dir.resolve()).encode()).hexdigest()
    return {"title": f"{engine.model_name} [{digest[:10]}]", "model_name": engine.model_name, "hash": digest[:10],
            "sha256": digest, "filename": str(engine.model_dir), "config": None}


@router.post("/txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request, runtime: RuntimeDep, settings: SettingsDep,
                  caller: CallerDep) -> dict[str, Any]:
    """Generate; ``images`` are base64 PNGs (with the ``parameters`` chunk), ``info`` a JSON string."""
    return await _generate(body, body.to_params(), request, runtime, settings, caller)


@router.post("/img2img")
async def img2img(body: Img2ImgRequest, request: Request, runtime: RuntimeDep, settings: SettingsDep,
                  caller: CallerDep) -> dict[str, Any]:
    """Generate from a starting picture (``init_images``, ``denoising_strength``); answered as txt2img."""
    runtime.require_image()  # 503 before the picture is decoded
    params = await asyncio.to_thread(body.to_params)  # decoding and resizing a big picture takes a while
    out = await _generate(body, params, request, runtime, settings, caller)
    out["parameters"] = body.model_dump(exclude={"init_images", "mask"})
    return out


async def _generate(body: Txt2ImgRequest, params: ImageParams, request: Request, runtime: Runtime,
                    settings: Settings, caller: str | None) -> dict[str, Any]:
    engine = runtime.require_image()
    job = await submit_image(engine, params, owner=caller)
    with contextlib.suppress(Cancelled):  # A1111 answers an interrupt with 200 and the picture as far as it got
        await unless_disconnected(request, wait_job(job, settings.request_timeout))
    images = await asyncio.to_thread(base64_pngs, engine, job.images) if body.send_images else []
    count = len(job.seeds)
    info = {
        "prompt": params.prompt, "all_prompts": [params.prompt] * count,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * count,
        "seed": job.seeds[0] if job.seeds else params.seed, "all_seeds": job.seeds,
        "subseed": -1, "all_subseeds": [-1] * count,
        "width": params.width, "height": params.height, "sampler_name": engine.sampler,
        "cfg_scale": params.guidance_scale, "steps": params.steps, "batch_size": body.batch_size,
        "sd_model_name": engine.model_name, "sd_model_hash": _model_entry(engine)["hash"],
        "infotexts": job.infotexts, "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "images_urls": [engine.store.link(n) or f"/images/{n}.png" for n in job.images],  # presigned, or ours
        "interrupted": job.state == "cancelled",
    }
    if params.init_image is not None:
        info["denoising_strength"] = params.strength
    return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}


@router.get("/progress")
async def progress(runtime: RuntimeDep, caller: CallerDep, skip_current_image: bool = False) -> dict[str, Any]:
    """Progress of the running job, 0..1, with an ETA; zeros when idle. With per-user keys a caller sees only its
    own job (another user's running job reads as idle)."""
    engine = runtime.require_image()
    job = engine.current
    if job is not None and caller is not None and job.owner != caller:
        job = None
    if job is None:
        queued = engine.queue_depth if caller is None else 0
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": queued,
                 "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    elapsed = time.time() - (job.started or time.time())
    frac = job.progress
    eta = elapsed / frac - elapsed if frac > 0 else 0.0
    state = {"skipped": False, "interrupted": job.cancelled, "job": job.id, "job_count": engine.queue_depth + 1,
             "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)), "job_no": 0,
             "sampling_step": job.step % max(1, job.params.steps), "sampling_steps": job.params.steps}
    preview = base64.b64encode(job.preview).decode() if job.preview else None  # A1111's: no data: prefix
    return {"progress": round(frac, 4), "eta_relative": round(eta, 3), "state": state, "current_image": preview,
            "textinfo": f"Step {job.step}/{job.total_steps}"}


@router.post("/interrupt")
async def interrupt(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Stop the running job (with per-user keys, only the caller's own); always 200, idempotent, as in A1111."""
    if runtime.image is not None:  # in a worker thread: in a team, the others' jobs are asked through the database
        await asyncio.to_thread(runtime.image.interrupt, owner=caller)
    return {}


@router.post("/skip")
async def skip(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """End the current picture as far as it got and go on with the next of the batch; always 200."""
    if runtime.image is not None:
        await asyncio.to_thread(runtime.image.skip, owner=caller)
    return {}


@router.get("/sd-models")
async def sd_models(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """The one loaded checkpoint."""
    return [_model_entry(runtime.require_image())]


@router.get("/samplers")
async def samplers(settings: SettingsDep) -> list[dict[str, Any]]:
    """Samplers the configured image runtime can switch to."""
    return [{"name": name, "aliases": [runs], "options": {}} for name, runs in SAMPLERS[settings.image_runtime].items()]


@router.get("/schedulers")
async def schedulers(settings: SettingsDep) -> list[dict[str, Any]]:
    """Schedules a sampler can run with (A1111 1.9+); "DPM++ 2M Karras" is the same as sampler "DPM++ 2M" with
    scheduler "karras"."""
    return [{"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1,
             "need_inner_model": False} for name in RUNTIME_SCHEDULES[settings.image_runtime]]


@router.get("/sd-vae")
async def sd_vae() -> list[dict[str, Any]]:
    """No separate VAEs: the model's own is used."""
    return []


@router.get("/loras")
async def loras() -> list[dict[str, Any]]:
    """No LoRAs here."""
    return []


@router.get("/upscalers")
async def upscalers() -> list[dict[str, Any]]:
    """No upscalers here."""
    return []


@router.get("/embeddings")
async def embeddings() -> dict[str, Any]:
    """No textual-inversion embeddings here."""
    return {"loaded": {}, "skipped": {}}


@router.get("/hypernetworks")
@router.get("/face-restorers")
@router.get("/realesrgan-models")
@router.get("/prompt-styles")
@router.get("/sd-modules")
@router.get("/latent-upscale-modes")
@router.get("/script-info")
@router.get("/extensions")
async def nothing_here() -> list[dict[str, Any]]:
    """A1111's other lists (hypernetworks, face restorers, styles, extensions, ...): empty here."""
    return []


@router.get("/scripts")
async def scripts() -> dict[str, list[str]]:
    """No scripts here."""
    return {"txt2img": [], "img2img": []}


@router.get("/cmd-flags")
async def cmd_flags() -> dict[str, Any]:
    """No command-line flags of A1111's here."""
    return {}


@router.post("/png-info")
async def png_info(body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    """The generation parameters a PNG carries (ours, or any A1111 picture's ``parameters`` text chunk)."""
    data = body.get("image")
    if not isinstance(data, str) or not data:
        raise InvalidRequest("png-info takes an image: a base64 PNG or a data: URL.", param="image")
    chunks = await asyncio.to_thread(_png_text, data)
    info = chunks.pop("parameters", "")
    return {"info": info, "items": chunks, "parameters": parse_infotext(info) if info else {}}


def _png_text(data: str) -> dict[str, str]:
    import io

    from PIL import Image, UnidentifiedImageError

    text = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
            return {str(k): str(v) for k, v in image.info.items() if isinstance(v, str)}
    except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise InvalidRequest("The image is not a picture in base64.", param="image") from None


@router.post("/refresh-checkpoints")
async def refresh_checkpoints() -> None:
    """The one checkpoint is the one loaded: nothing to refresh."""


@router.post("/reload-checkpoint")
async def reload_checkpoint(runtime: RuntimeDep) -> None:
    """Load the checkpoint (nothing is rendered); it then stays for AIPC_KEEP_ALIVE."""
    await load_only(runtime, "image", None)


@router.post("/unload-checkpoint")
async def unload_checkpoint(runtime: RuntimeDep) -> None:
    """Let the checkpoint go now (the next picture loads it again)."""
    await load_only(runtime, "image", 0)


@router.get("/memory")
async def memory() -> dict[str, Any]:
    """The machine's memory, as A1111 reports it (no CUDA here)."""
    import psutil

    ram = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    return {"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total, "process": rss},
            "cuda": {"error": "no CUDA device: aipc-chat runs on OpenVINO (CPU, GPU, NPU)"}}


@router.get("/options")
async def get_options(runtime: RuntimeDep) -> dict[str, Any]:
    """The options Open WebUI reads: the current checkpoint."""
    engine = runtime.require_image()
    return {"sd_model_checkpoint": _model_entry(engine)["title"], "samples_format": "png"}


@router.post("/options")
async def set_options(runtime: RuntimeDep, options: Annotated[dict[str, Any], Body()]) -> None:
    """Accept the loaded checkpoint (by title or name); other options are ignored."""
    engine = runtime.require_image()
    wanted = options.get("sd_model_checkpoint")
    entry = _model_entry(engine)
    if wanted is not None and wanted not in (entry["title"], entry["model_name"]):
        raise InvalidRequest(f"Checkpoint '{wanted}' is not available; this server has '{entry['title']}'.",
                             param="sd_model_checkpoint")
