"""The in-process image engine: Stable Diffusion 1.5 through optimum-intel, on one owner thread with a job queue.

Every job has an id, a state, progress (from the pipeline's step callback) and can be cancelled. Images are saved
by ``ImageStore`` as PNG with AUTOMATIC1111 metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aipc_chat.engines.store import ImageStore, infotext
from aipc_chat.errors import (
    AipcError,
    Busy,
    Cancelled,
    ContentFiltered,
    EngineFailure,
    InvalidRequest,
    NotReady,
    RequestTimeout,
)
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
SEED_MAX = 2**32 - 1
FILTERED = "content_filter"
# AUTOMATIC1111's sampler names and the diffusers schedulers behind them.
SCHEDULERS: dict[str, str] = {
    "PLMS": "PNDMScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "DDIM": "DDIMScheduler",
    "LMS": "LMSDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
}
SAMPLERS = {cls: name for name, cls in SCHEDULERS.items()}


@dataclass(frozen=True)
class ImageParams:
    """One generation request, validated against the model by ``ImageEngine.check``."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int | None = None
    n: int = 1
    sampler: str | None = None


@dataclass
class ImageJob:
    """A queued or running generation; the owner thread updates it, any thread reads it."""

    params: ImageParams
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: JobState = "queued"
    step: int = 0  # steps done, over all images of the job
    seeds: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # reserved at submission, so URLs are known at once
    images: list[str] = field(default_factory=list)  # the names stored so far
    infotexts: list[str] = field(default_factory=list)
    error: str | None = None
    failure: AipcError | None = None  # what to raise for a failed job, when the engine knows (else a 500)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total_steps(self) -> int:
        """Steps of the whole job (steps x images)."""
        return self.params.steps * self.params.n

    @property
    def progress(self) -> float:
        """0..1."""
        return 1.0 if self.state == "done" else min(1.0, self.step / max(1, self.total_steps))

    @property
    def finished_ok(self) -> bool:
        """True when the job ended with its images."""
        return self.state == "done"

    def cancel(self) -> None:
        """Stop the job at its next step (or before it starts)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancel.is_set()

    def _end(self, state: JobState, error: str | None = None) -> None:
        self.state, self.error, self.finished = state, error, time.time()
        with self._lock:
            self._done.set()
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting
                loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float) -> None:
        """Wait until the job ends; raise what ended it badly; cancel it and raise RequestTimeout past timeout."""
        event = asyncio.Event()
        with self._lock:
            if self._done.is_set():
                event.set()
            else:
                self._waiters.append((asyncio.get_running_loop(), event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            self.cancel()
            raise RequestTimeout(f"The image took longer than {timeout:g} s and was cancelled.") from None
        self.raise_for_state()

    def raise_for_state(self) -> None:
        """Raise the error of a failed or cancelled job."""
        if self.state == "cancelled":
            raise Cancelled("The image generation was cancelled.")
        if self.state == "failed" and self.error and self.error.startswith(FILTERED):
            raise ContentFiltered("The image was withheld by the model's safety checker.")
        if self.state == "failed" and self.failure is not None:
            raise self.failure
        if self.state == "failed":
            raise EngineFailure(f"The image generation failed: {self.error}")

    def as_dict(self, url_for: Any = None) -> dict[str, Any]:
        """The JSON form (``GET /v1/images/jobs/{id}``)."""
        return {
            "id": self.id, "state": self.state, "step": self.step, "total_steps": self.total_steps,
            "progress": round(self.progress, 4), "seeds": self.seeds, "error": self.error,
            "images": [url_for(n) for n in self.images] if url_for else self.images,
            "created": self.created, "started": self.started, "finished": self.finished,
        }


def size_step(pipe: Any) -> int:
    """The size multiple the pipeline needs: VAE scale factor x the UNet's downsampling."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    blocks = pipe.unet.config.get("block_out_channels") if hasattr(pipe.unet, "config") else None
    unet_factor = 2 ** (len(blocks) - 1) if blocks else 8
    return vae_factor * unet_factor


def image_ov_config(settings: Settings) -> dict[str, str]:
    """OpenVINO properties for the image pipeline (the compile cache)."""
    return {"CACHE_DIR": str(settings.compile_cache_dir / "image")}


class ImageEngine:
    """Serves image jobs from one optimum-intel pipeline on its own thread."""

    def __init__(self, settings: Settings, model_dir: Path, model_name: str, device: str, *,
                 max_size: int = 1024) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.model_name = model_name
        self.device = device
        self.max_size = max_size
        self.step_multiple = 64
        self.store = ImageStore(settings.data_dir / "images", settings.image_retention)
        self.load_seconds: float | None = None
        self.sampler = self.default_sampler = "PLMS"
        self.static_size = (settings.npu_image_width, settings.npu_image_height) if device == "NPU" else None
        self._pipe: Any = None
        self._queue: queue.Queue[ImageJob | None] = queue.Queue(maxsize=settings.image_queue_size)
        self._jobs: dict[str, ImageJob] = {}
        self._schedulers: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self.current: ImageJob | None = None
        self.observers: list[Callable[[ImageJob], None]] = []  # called on the owner thread as each job ends

    def load(self) -> None:
        """Load and compile the pipeline (blocking) and start the owner thread."""
        from optimum.intel import OVStableDiffusionPipeline

        t0 = time.perf_counter()
        self._pipe = OVStableDiffusionPipeline.from_pretrained(
            str(self.model_dir), device=self.device, ov_config=image_ov_config(self.settings),
            compile=self.static_size is None)
        self._pipe.set_progress_bar_config(disable=True)  # progress goes to jobs and the log, not a tqdm bar
        if self.static_size is not None:  # NPU compiles static shapes only
            width, height = self.static_size
            self._pipe.reshape(batch_size=1, height=height, width=width, num_images_per_prompt=1)
            self._pipe.compile()
        self.step_multiple = size_step(self._pipe)
        self.default_sampler = SAMPLERS.get(type(self._pipe.scheduler).__name__, type(self._pipe.scheduler).__name__)
        self.sampler = self.default_sampler
        self._schedulers[self.sampler] = self._pipe.scheduler
        self.load_seconds = time.perf_counter() - t0
        self._thread = threading.Thread(target=self._run, name="image-owner", daemon=True)
        self._thread.start()
        log.info("image model %s loaded on %s in %.2f s (sizes %d..%d step %d)", self.model_name, self.device,
                 self.load_seconds, self.step_multiple, self.max_size, self.step_multiple)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the running job and stop the owner thread."""
        if self.current is not None:
            self.current.cancel()
        while True:  # cancel what is still queued
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job._end("cancelled", "shutdown")
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def check(self, params: ImageParams) -> None:
        """Validate sizes, steps and counts against what the model and the settings allow."""
        if self.static_size is not None and (params.width, params.height) != self.static_size:
            raise InvalidRequest(f"This NPU pipeline is compiled for {self.static_size[0]}x{self.static_size[1]} "
                                 "images only.", param="size")
        if params.n > self.settings.image_max_n:
            raise InvalidRequest(f"At most {self.settings.image_max_n} images per request.", param="n")
        if params.steps > self.settings.image_max_steps:
            raise InvalidRequest(f"At most {self.settings.image_max_steps} steps.", param="steps")
        if params.sampler is not None and params.sampler not in SCHEDULERS:
            raise InvalidRequest(f"Unknown sampler '{params.sampler}'; use one of {', '.join(SCHEDULERS)}.",
                                 param="sampler_name")
        for name, value in (("width", params.width), ("height", params.height)):
            if value < self.step_multiple or value > self.max_size or value % self.step_multiple:
                raise InvalidRequest(
                    f"{name} must be a multiple of {self.step_multiple} from {self.step_multiple} to "
                    f"{self.max_size}; got {value}.", param=name)

    def submit(self, params: ImageParams) -> ImageJob:
        """Queue a job; Busy when the queue is full."""
        if self._thread is None:
            raise NotReady("The image model is not loaded.")
        self.check(params)
        job = ImageJob(params, names=[self.store.new_name() for _ in range(params.n)])
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy("The image queue is full; retry shortly.", retry_after=5) from None
        self._jobs[job.id] = job
        self._forget_old_jobs()
        return job

    def get_job(self, job_id: str) -> ImageJob | None:
        """A job by id (recent jobs only)."""
        return self._jobs.get(job_id)

    def cancel_all(self) -> None:
        """Cancel every queued and running job."""
        for job in list(self._jobs.values()):
            if job.finished is None:
                job.cancel()

    def interrupt(self) -> None:
        """Cancel the running job (AUTOMATIC1111's /interrupt)."""
        job = self.current
        if job is not None:
            job.cancel()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting."""
        return self._queue.qsize()

    def _forget_old_jobs(self, keep: int = 256) -> None:
        if len(self._jobs) > keep:
            for job_id in [j.id for j in self._jobs.values() if j.finished][: len(self._jobs) - keep]:
                del self._jobs[job_id]

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.cancelled:
                job._end("cancelled")
                continue
            self.current = job
            job.state, job.started = "running", time.time()
            try:
                self._generate(job)
            except _Interrupted:
                job._end("cancelled")
            except _Flagged:
                job._end("failed", f"{FILTERED}: the safety checker flagged the image")
            except AipcError as exc:
                log.warning("image job %s failed: %s", job.id, exc.message)
                job.failure = exc
                job._end("failed", exc.message)
            except Exception as exc:
                log.exception("image job %s failed", job.id)
                job._end("failed", f"{type(exc).__name__}: {exc}")
            else:
                job._end("done")
            finally:
                self.current = None
                self._notify(job)

    def _notify(self, job: ImageJob) -> None:
        for observe in self.observers:
            try:
                observe(job)
            except Exception:
                log.exception("an image observer failed")

    def _generate(self, job: ImageJob) -> None:
        import torch

        p = job.params
        self._use_sampler(p.sampler or self.default_sampler)
        base_seed = p.seed if p.seed is not None and p.seed >= 0 else secrets.randbelow(SEED_MAX)
        job.seeds = [(base_seed + i) % (SEED_MAX + 1) for i in range(p.n)]
        for index, seed in enumerate(job.seeds):
            done_before = index * p.steps

            def on_step(pipe: Any, i: int, timestep: Any, kwargs: dict[str, Any],
                        done_before: int = done_before) -> dict[str, Any]:
                # PNDM calls back steps + 1 times: scale by the pipeline's own count of timesteps.
                job.step = done_before + round((i + 1) * p.steps / max(1, pipe.num_timesteps))
                if job.cancelled:
                    raise _Interrupted  # unlike pipe._interrupt, this also skips the VAE decode
                return kwargs

            t0 = time.perf_counter()
            result = self._pipe(
                prompt=p.prompt, negative_prompt=p.negative_prompt or None, width=p.width, height=p.height,
                num_inference_steps=p.steps, guidance_scale=p.guidance_scale,
                generator=torch.Generator(device="cpu").manual_seed(seed), callback_on_step_end=on_step,
            )
            flagged = getattr(result, "nsfw_content_detected", None)  # set when the model folder ships a checker
            if flagged and flagged[0]:
                raise _Flagged
            image = result.images[0]
            text = infotext(p, seed=seed, sampler=self.sampler, model=self.model_name)
            job.infotexts.append(text)
            job.images.append(self.store.save(image, text, name=job.names[index]))
            log.info("image job %s: %dx%d, %d steps, seed %d in %.2f s", job.id, p.width, p.height, p.steps,
                     seed, time.perf_counter() - t0)

    def _use_sampler(self, name: str) -> None:
        """Swap the scheduler for this job (it runs in Python: any diffusers scheduler suits the OpenVINO models)."""
        if name == self.sampler:
            return
        if name not in self._schedulers:
            import diffusers

            cls = getattr(diffusers, SCHEDULERS[name])
            self._schedulers[name] = cls.from_config(self._schedulers[self.default_sampler].config)
        self._pipe.scheduler = self._schedulers[name]
        self.sampler = name

    def info(self) -> dict[str, Any]:
        """What the engine serves (for /ready, /sdapi/v1/sd-models)."""
        return {"model": self.model_name, "device": self.device, "sampler": self.sampler,
                "size_step": self.step_multiple, "max_size": self.max_size,
                "path": json.dumps(str(self.model_dir))}


class _Interrupted(Exception):
    """The running job was cancelled mid-way."""


class _Flagged(Exception):
    """The pipeline's own safety checker flagged the image."""
