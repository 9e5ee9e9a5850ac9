"""The local image renderer: Stable Diffusion 1.5 through optimum-intel's OpenVINO pipeline.

``ImageEngine`` (``jobs.py``) owns the queue, the owner thread and supervision; this module only loads the pipeline
(through a factory, so a broken one can be rebuilt and tests can inject faults), checks what it can render, and
renders a job with the step callback driving progress and cancellation. Images are saved by ``ImageStore`` as PNG
with AUTOMATIC1111 metadata.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aipc_chat.engines.contract import SCHEDULERS, SCHEDULES, Flagged, ImageJob, ImageParams, Interrupted
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.engines.residency import Residency
from aipc_chat.engines.store import ImageStore, infotext
from aipc_chat.errors import InvalidRequest
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

SEED_MAX = 2**32 - 1
SAMPLERS = {cls: name for name, cls in SCHEDULERS.items()}
PipelineFactory = Callable[[], Any]  # builds a fresh, compiled OVStableDiffusionPipeline


def size_step(pipe: Any) -> int:
    """The size multiple the pipeline needs: VAE scale factor x the UNet's downsampling."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    blocks = pipe.unet.config.get("block_out_channels") if hasattr(pipe.unet, "config") else None
    unet_factor = 2 ** (len(blocks) - 1) if blocks else 8
    return vae_factor * unet_factor


# A1111's "Approx cheap" preview: SD 1.5's four latent channels to RGB by one linear map, no model run.
LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


def cheap_preview(latents: Any) -> bytes:
    """A PNG of what the latents show now, at latent size (1/8 of the picture's), from A1111's cheap map."""
    import numpy as np
    from PIL import Image

    sample = np.asarray(latents[0].float().numpy() if hasattr(latents, "float") else latents[0], dtype=np.float32)
    rgb = np.einsum("lhw,lr->hwr", sample[:4], np.asarray(LATENT_RGB, dtype=np.float32))
    pixels = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def schedule_applies(sampler: str, schedule: str) -> bool:
    """Whether a sampler's diffusers scheduler takes this schedule's option."""
    import importlib

    options = SCHEDULES.get(schedule)
    if options is None or sampler not in SCHEDULERS:
        return False
    if not options:
        return True
    cls = getattr(importlib.import_module("diffusers"), SCHEDULERS[sampler])
    return all(name in inspect.signature(cls.__init__).parameters for name in options)


def _read_config(path: Path) -> dict[str, Any]:
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def image_ov_config(settings: Settings) -> dict[str, str]:
    """OpenVINO properties for the image pipeline (the compile cache)."""
    return {"CACHE_DIR": str(settings.compile_cache_dir / "image")}


def npu_static_size(settings: Settings, device: str) -> tuple[int, int] | None:
    """The one size an NPU pipeline is compiled for (NPUs compile static shapes only); None elsewhere."""
    return (settings.npu_image_width, settings.npu_image_height) if device == "NPU" else None


class OpenVINOImagePipelines:
    """The default pipeline factory: the SD pipeline compiled for its device (static shapes on NPU)."""

    def __init__(self, settings: Settings, model_dir: Path, device: str) -> None:
        self.settings, self.model_dir, self.device = settings, model_dir, device
        self.static_size = npu_static_size(settings, device)

    def __call__(self) -> Any:
        from optimum.intel import OVStableDiffusionPipeline

        pipe = OVStableDiffusionPipeline.from_pretrained(
            str(self.model_dir), device=self.device, ov_config=image_ov_config(self.settings),
            compile=self.static_size is None)
        pipe.set_progress_bar_config(disable=True)  # progress goes to jobs and the log, not a tqdm bar
        if self.static_size is not None:  # NPU compiles static shapes only
            width, height = self.static_size
            pipe.reshape(batch_size=1, height=height, width=width, num_images_per_prompt=1)
            pipe.compile()
        return pipe


class DiffusersRenderer:
    """Renders jobs with an optimum-intel Stable Diffusion pipeline."""

    local = True

    def __init__(self, settings: Settings, model_dir: Path, model_name: str, device: str, *, max_size: int = 1024,
                 pipelines: PipelineFactory | None = None) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.model_name = model_name
        self.device = device
        self.max_size = max_size
        self.step_multiple = 64
        self.sampler = self.default_sampler = "PLMS"
        self.static_size = npu_static_size(settings, device)
        self._pipelines = pipelines if pipelines is not None else OpenVINOImagePipelines(settings, model_dir, device)
        self._pipe: Any = None
        self._img2img: Any = None
        self._schedulers: dict[tuple[str, str], Any] = {}

    def prepare(self) -> None:
        """Sizes and sampler from the model's configuration files, without the pipeline (load on demand)."""
        step = 64
        try:
            vae = _read_config(self.model_dir / "vae_decoder" / "config.json")
            unet = _read_config(self.model_dir / "unet" / "config.json")
            step = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["block_out_channels"]) - 1)
            scheduler = _read_config(self.model_dir / "scheduler" / "scheduler_config.json")["_class_name"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("the image model's configuration is unreadable: sizes step 64 until it loads")
            scheduler = "PNDMScheduler"
        self.step_multiple = step
        self.default_sampler = self.sampler = SAMPLERS.get(scheduler, scheduler)

    def imports(self) -> None:
        """Import the libraries the pipeline needs (before a load is measured: they are not the model's cost)."""
        import optimum.intel  # noqa: F401
        import torch  # noqa: F401

    def load(self) -> None:
        """Load and compile the pipeline (blocking)."""
        t0 = time.perf_counter()
        self._install(self._pipelines())
        log.info("image model %s loaded on %s in %.2f s (sizes %d..%d step %d)", self.model_name, self.device,
                 time.perf_counter() - t0, self.step_multiple, self.max_size, self.step_multiple)

    def rebuild(self) -> None:
        """A fresh pipeline in place of one that failed."""
        self._pipe, self._img2img = None, None  # release the broken one first
        self._install(self._pipelines())

    def unload(self) -> bool:
        """Let the pipeline go (the next job loads it again)."""
        self._pipe, self._img2img, self._schedulers = None, None, {}
        return True

    @property
    def loaded(self) -> bool:
        """Whether the pipeline is held."""
        return self._pipe is not None

    def _install(self, pipe: Any) -> None:
        self._pipe = pipe
        self.step_multiple = size_step(pipe)
        self.default_sampler = SAMPLERS.get(type(pipe.scheduler).__name__, type(pipe.scheduler).__name__)
        self.sampler = self.default_sampler
        self._schedulers = {(self.sampler, "automatic"): pipe.scheduler}

    def unreachable(self) -> str | None:
        """A local pipeline is always at hand."""
        return None

    def check(self, params: ImageParams) -> None:
        """The NPU's static size, and the samplers and schedules this pipeline can switch to."""
        if self.static_size is not None and (params.width, params.height) != self.static_size:
            raise InvalidRequest(f"This NPU pipeline is compiled for {self.static_size[0]}x{self.static_size[1]} "
                                 "images only.", param="size")
        if params.sampler is not None and params.sampler not in SCHEDULERS:
            raise InvalidRequest(f"Unknown sampler '{params.sampler}'; use one of {', '.join(SCHEDULERS)} (with a "
                                 f"scheduler: {', '.join(SCHEDULES)}).", param="sampler_name")
        schedule = params.schedule or "automatic"
        if schedule not in SCHEDULES:
            raise InvalidRequest(f"Unknown scheduler '{params.schedule}'; use one of {', '.join(SCHEDULES)}.",
                                 param="scheduler")
        sampler = params.sampler or self.default_sampler
        if schedule != "automatic" and not schedule_applies(sampler, schedule):
            raise InvalidRequest(f"The {sampler} sampler has no {schedule} schedule; use it with "
                                 f"{', '.join(s for s in SCHEDULES if schedule_applies(sampler, s))}.",
                                 param="scheduler")

    def render(self, job: ImageJob, store: ImageStore) -> None:
        """Render every image of the job, storing each as it is done (an interrupted or skipped one as far as it
        got); text to image, or image to image from ``init_image``."""
        import torch

        p = job.params
        pipe = self._pipe if p.init_image is None else self._image_to_image()
        self._use_sampler(pipe, p.sampler or self.default_sampler, p.schedule or "automatic")
        base_seed = p.seed if p.seed is not None and p.seed >= 0 else secrets.randbelow(SEED_MAX)
        job.seeds = [(base_seed + i) % (SEED_MAX + 1) for i in range(p.n)]
        size = {"width": p.width, "height": p.height} if p.init_image is None else {
            "image": p.init_image, "strength": p.strength}
        for index, seed in enumerate(job.seeds):
            done_before = index * p.steps

            def on_step(pipe: Any, i: int, timestep: Any, kwargs: dict[str, Any],
                        done_before: int = done_before) -> dict[str, Any]:
                # PNDM calls back steps + 1 times: scale by the pipeline's own count of timesteps.
                job.step = done_before + round((i + 1) * p.steps / max(1, pipe.num_timesteps))
                if job.cancelled and not job.partial:
                    raise Interrupted  # unlike stopping the pipeline, this also skips the VAE decode
                if job.cancelled or job.take_skip():
                    pipe._interrupt = True  # diffusers skips the remaining steps and decodes what it has
                elif "latents" in kwargs:
                    job.set_preview(cheap_preview(kwargs["latents"]), job.step)
                return kwargs

            t0 = time.perf_counter()
            result = pipe(
                prompt=p.prompt, negative_prompt=p.negative_prompt or None, num_inference_steps=p.steps,
                guidance_scale=p.guidance_scale, generator=torch.Generator(device="cpu").manual_seed(seed),
                callback_on_step_end=on_step, **size,
            )
            flagged = getattr(result, "nsfw_content_detected", None)  # set when the model folder ships a checker
            if flagged and flagged[0]:
                raise Flagged
            image = result.images[0]
            text = infotext(p, seed=seed, sampler=self.sampler, model=self.model_name)
            job.infotexts.append(text)
            job.images.append(store.save(image, text, name=job.names[index]))
            log.info("image job %s: %dx%d, %d steps, seed %d in %.2f s%s", job.id, p.width, p.height, p.steps,
                     seed, time.perf_counter() - t0, " (interrupted)" if job.cancelled else "")
            if job.cancelled:
                raise Interrupted  # the picture as far as it got is kept; the rest of the batch is not made

    def _image_to_image(self) -> Any:
        """optimum-intel's image-to-image pipeline over the loaded one's components (the same compiled models: no
        second copy of the weights); made once per loaded pipeline."""
        if self._img2img is None:
            from optimum.intel import OVStableDiffusionImg2ImgPipeline

            pipe = object.__new__(OVStableDiffusionImg2ImgPipeline)
            pipe.__dict__.update(self._pipe.__dict__)
            if getattr(pipe, "vae_encoder", None) is None:
                raise InvalidRequest("This image model has no VAE encoder: image to image is not available.",
                                     param="init_images")
            self._img2img = pipe
        return self._img2img

    def _use_sampler(self, pipe: Any, name: str, schedule: str) -> None:
        """Give the pipeline this job's scheduler (it runs in Python: any diffusers scheduler suits the OpenVINO
        models); made once per sampler and schedule."""
        key = (name, schedule)
        if key not in self._schedulers:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[name])
            self._schedulers[key] = cls.from_config(self._schedulers[(self.default_sampler, "automatic")].config,
                                                    **SCHEDULES[schedule])
        pipe.scheduler = self._schedulers[key]
        self.sampler = name if schedule == "automatic" else f"{name} {schedule.capitalize()}"

    def info(self) -> dict[str, Any]:
        """What the engine serves (for /ready, /sdapi/v1/sd-models)."""
        return {"model": self.model_name, "device": self.device, "sampler": self.sampler,
                "size_step": self.step_multiple, "max_size": self.max_size,
                "path": json.dumps(str(self.model_dir))}


def local_image_engine(settings: Settings, model_dir: Path, model_name: str, device: str, *, max_size: int = 1024,
                       pipelines: PipelineFactory | None = None, residency: Residency | None = None) -> ImageEngine:
    """An image engine over a local optimum-intel pipeline."""
    return ImageEngine(settings, DiffusersRenderer(settings, model_dir, model_name, device, max_size=max_size,
                                                   pipelines=pipelines), residency=residency)
