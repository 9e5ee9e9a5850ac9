"""The local image renderers' common part: Stable Diffusion 1.5 run in this process, through openvino-genai (the
default runtime, ``image_genai.py``) or optimum-intel and diffusers (``image_optimum.py``, the ``[optimum]`` extra).

``ImageEngine`` (``jobs.py``) owns the queue, the owner thread and supervision. A renderer here loads its pipeline
(through a factory, so a broken one can be rebuilt and tests can inject faults), checks what it can render, and
renders a job: the seeds, the step callback driving progress, previews, interrupt and skip, and storing each
picture with AUTOMATIC1111's metadata are shared; the runtimes supply one picture's generation. Nothing here
imports a model library at module level: the runtime chosen is imported when its pipeline loads.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

from aipc_chat.engines.contract import (
    RUNTIME_SCHEDULES,
    SAMPLERS,
    SCHEDULES,
    ImageJob,
    ImageParams,
    ImageRuntime,
    Interrupted,
)
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.engines.scheduler import Scheduler
from aipc_chat.engines.store import ImageStore, infotext
from aipc_chat.errors import InvalidRequest
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

SEED_MAX = 2**32 - 1
PipelineFactory = Callable[[], Any]  # builds a fresh, compiled pipeline of the renderer's runtime
StepAction = Literal["go", "stop", "abort"]  # what a step callback does next: go on, decode what it has, give up

# diffusers' class name in a model's scheduler_config.json -> A1111's sampler name
SAMPLER_OF_CLASS = {cls: name for name, cls in SAMPLERS["optimum"].items()}

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


def step_action(job: ImageJob, done_before: int, step: int, num_steps: int) -> StepAction:
    """Record a finished step of one picture and say what the pipeline does next.

    Progress counts the job's requested steps over all its pictures (PNDM calls back steps + 1 times, image to image
    fewer: scaled by the pipeline's own count). A job cancelled outright is abandoned (no decode); interrupted the
    A1111 way or skipped, the picture so far is decoded and kept.
    """
    job.step = done_before + round((step + 1) * job.params.steps / max(1, num_steps))
    if job.cancelled and not job.partial:
        return "abort"
    if job.cancelled or job.take_skip():
        return "stop"
    return "go"


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


class LocalRenderer:
    """What both local runtimes share: the model's folder, its sizes and sampler, checks, seeds and storing."""

    local = True
    runtime: ImageRuntime

    def __init__(self, settings: Settings, model_dir: Path, model_name: str, device: str, *, max_size: int = 1024,
                 pipelines: PipelineFactory) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.model_name = model_name
        self.device = device
        self.max_size = max_size
        self.step_multiple = 64
        self.native_size = 512  # the size it was trained at (size "auto"); read from the model's configuration
        self.sampler = self.default_sampler = "PLMS"
        self.static_size = npu_static_size(settings, device)
        self._pipelines = pipelines
        self._pipe: Any = None

    @property
    def samplers(self) -> dict[str, str]:
        """A1111's sampler names this runtime can switch to, with what runs each."""
        return SAMPLERS[self.runtime]

    def sampler_names(self) -> tuple[str, ...]:
        """A1111's names of the samplers it runs."""
        return tuple(self.samplers)

    @property
    def schedules(self) -> tuple[str, ...]:
        """A1111's schedules this runtime takes."""
        return RUNTIME_SCHEDULES[self.runtime]

    def prepare(self) -> None:
        """Sizes and sampler from the model's configuration files, without the pipeline (load on demand)."""
        step = 64
        try:
            vae = _read_config(self.model_dir / "vae_decoder" / "config.json")
            unet = _read_config(self.model_dir / "unet" / "config.json")
            step = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["block_out_channels"]) - 1)
            if "sample_size" in unet:  # what the UNet was trained at, in latents (size "auto")
                self.native_size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
            scheduler = _read_config(self.model_dir / "scheduler" / "scheduler_config.json")["_class_name"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("the image model's configuration is unreadable: sizes step 64 until it loads")
            scheduler = "PNDMScheduler"
        self.step_multiple = step
        self.default_sampler = self.sampler = SAMPLER_OF_CLASS.get(scheduler, scheduler)

    def load(self) -> None:
        """Load and compile the pipeline (blocking)."""
        t0 = time.perf_counter()
        self._install(self._pipelines())
        log.info("image model %s loaded on %s by %s in %.2f s (sizes %d..%d step %d)", self.model_name, self.device,
                 self.runtime, time.perf_counter() - t0, self.step_multiple, self.max_size, self.step_multiple)

    def unload(self) -> None:
        """Let the pipeline go (the next job loads it again)."""
        self._pipe = None

    @property
    def loaded(self) -> bool:
        """Whether the pipeline is held."""
        return self._pipe is not None

    def _install(self, pipe: Any) -> None:
        self._pipe = pipe
        self.sampler = self.default_sampler

    def unreachable(self) -> str | None:
        """A local pipeline is always at hand."""
        return None

    def check(self, params: ImageParams) -> None:
        """The NPU's static size, and the samplers and schedules this runtime can switch to."""
        if self.static_size is not None and (params.width, params.height) != self.static_size:
            raise InvalidRequest(f"This NPU pipeline is compiled for {self.static_size[0]}x{self.static_size[1]} "
                                 "images only.", param="size")
        other: ImageRuntime = "optimum" if self.runtime == "genai" else "genai"
        if params.sampler is not None and params.sampler not in (*self.samplers, self.default_sampler):
            elsewhere = (f" ({params.sampler} needs AIPC_IMAGE_RUNTIME={other})"
                         if params.sampler in SAMPLERS[other] else "")
            raise InvalidRequest(f"Unknown sampler '{params.sampler}' for the {self.runtime} image runtime; use one "
                                 f"of {', '.join(self.samplers)}{elsewhere}.", param="sampler_name")
        schedule = params.schedule or "automatic"
        if schedule not in SCHEDULES:
            raise InvalidRequest(f"Unknown scheduler '{params.schedule}'; use one of {', '.join(self.schedules)}.",
                                 param="scheduler")
        if schedule not in self.schedules:
            raise InvalidRequest(f"The {self.runtime} image runtime has no {schedule} schedule; use "
                                 f"{', '.join(self.schedules)} (AIPC_IMAGE_RUNTIME={other} has "
                                 f"{', '.join(RUNTIME_SCHEDULES[other])}).", param="scheduler")
        self._check_schedule(params.sampler or self.default_sampler, schedule)

    def _check_schedule(self, sampler: str, schedule: str) -> None:
        """Refuse a schedule the sampler cannot take (a runtime with schedules says)."""

    def render(self, job: ImageJob, store: ImageStore) -> None:
        """Render every image of the job, storing each as it is done (an interrupted or skipped one as far as it
        got); text to image, or image to image from ``init_image``."""
        p = job.params
        self._use_sampler(p.sampler or self.default_sampler, p.schedule or "automatic", image_to_image=(
            p.init_image is not None))
        base_seed = p.seed if p.seed is not None and p.seed >= 0 else secrets.randbelow(SEED_MAX)
        job.seeds = [(base_seed + i) % (SEED_MAX + 1) for i in range(p.n)]
        for index, seed in enumerate(job.seeds):
            t0 = time.perf_counter()
            image = self._render_one(job, seed, done_before=index * p.steps)
            done = max(0, min(p.steps, job.step - index * p.steps)) if job.cancelled else None  # interrupted
            text = infotext(p, seed=seed, sampler=self.sampler, model=self.model_name, steps=done)
            job.infotexts.append(text)
            job.images.append(store.save(image, text, name=job.names[index]))
            log.info("image job %s: %dx%d, %d steps, seed %d in %.2f s%s", job.id, p.width, p.height, p.steps,
                     seed, time.perf_counter() - t0, " (interrupted)" if job.cancelled else "")
            if job.cancelled:
                raise Interrupted  # the picture as far as it got is kept; the rest of the batch is not made

    def _use_sampler(self, name: str, schedule: str, *, image_to_image: bool) -> None:
        raise NotImplementedError

    def _render_one(self, job: ImageJob, seed: int, *, done_before: int) -> Any:
        """One picture (PIL) of the job with this seed; raise Interrupted when the job is given up."""
        raise NotImplementedError

    def imports(self) -> None:
        """Import the runtime's libraries (before a load is measured: they are not the model's cost)."""


# Each runtime's module (imported when chosen: only the configured runtime's libraries load) and, in it, its pipeline
# factory and renderer.
RUNTIMES: dict[ImageRuntime, tuple[str, str, str]] = {
    "genai": ("aipc_chat.engines.image_genai", "GenAIImagePipelines", "GenAIRenderer"),
    "optimum": ("aipc_chat.engines.image_optimum", "OptimumImagePipelines", "OptimumRenderer"),
}


def _runtime_part(settings: Settings, index: int) -> Any:
    module, *names = RUNTIMES[settings.image_runtime]
    return getattr(importlib.import_module(module), names[index])


def image_pipelines(settings: Settings, model_dir: Path, device: str) -> PipelineFactory:
    """The pipeline factory of the configured image runtime."""
    return cast(PipelineFactory, _runtime_part(settings, 0)(settings, model_dir, device))


def local_image_engine(settings: Settings, model_dir: Path, model_name: str, device: str, *, max_size: int = 1024,
                       pipelines: PipelineFactory | None = None, scheduler: Scheduler | None = None) -> ImageEngine:
    """An image engine over a local pipeline of the configured runtime (``settings.image_runtime``)."""
    factory = pipelines if pipelines is not None else image_pipelines(settings, model_dir, device)
    renderer = _runtime_part(settings, 1)(settings, model_dir, model_name, device, max_size=max_size,
                                          pipelines=factory)
    return ImageEngine(settings, renderer, scheduler=scheduler)
