"""AUTOMATIC1111-compatible endpoints (``/sdapi/v1/...``), as Open WebUI and other A1111 clients call them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from aipc_chat.api.deps import CallerDep, RuntimeDep, SettingsDep
from aipc_chat.api.disconnect import unless_disconnected
from aipc_chat.api.schemas.images import Txt2ImgRequest
from aipc_chat.engines.contract import SCHEDULERS, ImageEngineClient
from aipc_chat.errors import Cancelled, InvalidRequest

router = APIRouter(prefix="/sdapi/v1", tags=["automatic1111"])


def _model_entry(engine: ImageEngineClient) -> dict[str, Any]:
    digest = hashlib.sha256(str(engine.model_dir.resolve()).encode()).hexdigest()
    return {"title": f"{engine.model_name} [{digest[:10]}]", "model_name": engine.model_name, "hash": digest[:10],
            "sha256": digest, "filename": str(engine.model_dir), "config": None}


@router.post("/txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request, runtime: RuntimeDep, settings: SettingsDep,
                  caller: CallerDep) -> dict[str, Any]:
    """Generate; ``images`` are base64 PNGs (with the ``parameters`` chunk), ``info`` a JSON string."""
    engine = runtime.require_image()
    params = body.to_params()
    job = engine.submit(params, owner=caller)
    with contextlib.suppress(Cancelled):  # A1111 answers an interrupt with 200 and the images finished before it
        await unless_disconnected(request, job.wait(settings.request_timeout))
    images = [base64.b64encode(engine.store.read(name) or b"").decode() for name in job.images]
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
        "images_urls": [f"/images/{n}.png" for n in job.images], "interrupted": job.state == "cancelled",
    }
    return {"images": images if body.send_images else [], "parameters": body.model_dump(), "info": json.dumps(info)}


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
    return {"progress": round(frac, 4), "eta_relative": round(eta, 3), "state": state, "current_image": None,
            "textinfo": f"Step {job.step}/{job.total_steps}"}


@router.post("/interrupt")
async def interrupt(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """Stop the running job (with per-user keys, only the caller's own); always 200, idempotent, as in A1111."""
    if runtime.image is not None:
        runtime.image.interrupt(owner=caller)
    return {}


@router.post("/skip")
async def skip(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """A1111's skip: here the same as interrupt (one image per job step loop)."""
    return await interrupt(runtime, caller)


@router.get("/sd-models")
async def sd_models(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """The one loaded checkpoint."""
    return [_model_entry(runtime.require_image())]


@router.get("/samplers")
async def samplers() -> list[dict[str, Any]]:
    """Samplers this server can switch to."""
    return [{"name": name, "aliases": [cls], "options": {}} for name, cls in SCHEDULERS.items()]


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
