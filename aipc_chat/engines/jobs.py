"""The image engine: one job queue and owner thread over a renderer (local openvino-genai or optimum-intel, or a
remote A1111).

Every job has an id, a state, progress and can be cancelled; observers hear of each job as it ends. A renderer
supplies only what differs: loading its pipeline, checking a request against it, and rendering one job. A job the
renderer fails fails alone; an unexpected error from the pipeline also has the model scheduler rebuild the pipeline
(503 with Retry-After meanwhile, ``failed`` after three rebuilds in a row fail). A local renderer's pipeline is
loaded and let go by the scheduler; each job holds the model while it renders.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aipc_chat.engines.contract import (
    FILTERED,
    NATIVE_SIZE,
    RETRY_AFTER_SECONDS,
    EngineHealth,
    Flagged,
    ImageJob,
    ImageParams,
    Interrupted,
    JobState,
    RenderLimits,
)
from aipc_chat.engines.scheduler import Lease, ModelSpec, Recovery, Scheduler, health_of, weights_mb
from aipc_chat.engines.store import ImageStore, make_image_store
from aipc_chat.errors import AipcError, Busy, EngineFailure, InvalidRequest, MemoryFull, NotReady
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)


class Renderer(Protocol):
    """What an image engine needs of the thing that makes pictures."""

    model_name: str
    device: str
    model_dir: Path
    max_size: int
    step_multiple: int
    native_size: int  # the size it was trained at (what size "auto" means)
    static_size: tuple[int, int] | None  # the one size it takes (an NPU's static shapes), if any
    sampler: str  # the sampler the last job used (A1111's name)
    default_sampler: str  # the model's own
    local: bool  # holds its pipeline in this process (counted in the memory budget, unloaded when idle)

    def load(self) -> None:
        """Build the pipeline (blocking)."""

    def prepare(self) -> None:
        """Learn what checking requests needs (sizes, sampler) without building the pipeline."""

    def imports(self) -> None:
        """Import what building the pipeline needs (so that a load's measured cost is the model's alone)."""

    def unload(self) -> None:
        """Let the pipeline go (the scheduler then gives its memory back)."""

    def check(self, params: ImageParams) -> None:
        """Raise InvalidRequest for what this pipeline cannot do (beyond the engine's common bounds)."""

    def render(self, job: ImageJob, store: ImageStore) -> None:
        """Make the job's pictures and store them; raise ``Interrupted`` when the job is cancelled mid-way."""

    def unreachable(self) -> str | None:
        """Why the renderer cannot be used now (a remote that does not answer), or None."""

    def sampler_names(self) -> tuple[str, ...] | None:
        """A1111's names of the samplers it runs; None when it cannot tell (a remote server)."""


class ImageEngine:
    """Serves image jobs from one renderer on its own thread."""

    name = "image"

    def __init__(self, settings: Settings, renderer: Renderer, store: ImageStore | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.renderer = renderer
        self.scheduler: Scheduler | None = None  # a local renderer's model is the scheduler's; a remote one is not
        if renderer.local:
            if scheduler is None:
                scheduler = Scheduler()
                scheduler.start()
            self.scheduler = scheduler
            keep = settings.keep_alive_seconds
            scheduler.add(ModelSpec(self.name, self._load_pipeline, self._unload_pipeline,
                                    weights_mb(renderer.model_dir), 0.0, math.inf if keep is None else keep))
        self.store = store if store is not None else make_image_store(settings)
        self.error: str | None = None  # why the owner thread stopped (the model broke for good), if it did
        self.observers: list[Callable[[ImageJob], None]] = []  # called on the owner thread as each job ends
        self._queue: queue.Queue[ImageJob | None] = queue.Queue(maxsize=settings.image_queue_size)
        self._jobs: dict[str, ImageJob] = {}
        self._thread: threading.Thread | None = None
        self._current: ImageJob | None = None

    # What the renderer serves, read through the engine (the contract's attributes).
    @property
    def model_name(self) -> str:
        """The model's name."""
        return self.renderer.model_name

    @property
    def device(self) -> str:
        """Where it runs."""
        return self.renderer.device

    @property
    def model_dir(self) -> Path:
        """Where it was loaded from."""
        return self.renderer.model_dir

    @property
    def sampler(self) -> str:
        """The sampler the last job used."""
        return self.renderer.sampler

    def limits(self) -> RenderLimits:
        """What its model takes, from the renderer (which checks each job against the same)."""
        r = self.renderer
        return RenderLimits(max_size=r.max_size, size_step=r.step_multiple, native_size=r.native_size,
                            static_size=r.static_size, samplers=r.sampler_names(), default_sampler=r.default_sampler)

    @property
    def current(self) -> ImageJob | None:
        """The job rendering now."""
        return self._current

    @property
    def queue_depth(self) -> int:
        """Jobs waiting."""
        return self._queue.qsize()

    def health(self) -> EngineHealth:
        """The engine's state, as the scheduler's record of its model says; a remote renderer is asked whether it
        answers."""
        if self._thread is None:
            return EngineHealth("loading", retry_after=RETRY_AFTER_SECONDS)
        health = health_of(self.scheduler.view(self.name)) if self.scheduler is not None else EngineHealth("ready")
        if health.state != "failed" and not self._thread.is_alive():
            return EngineHealth("failed", self.error or "the owner thread is not running", health.restarts)
        if health.state != "ready":
            return health
        problem = self.renderer.unreachable()
        return EngineHealth("unreachable", problem, health.restarts) if problem else health

    def check_serving(self) -> None:
        """Raise NotReady unless new jobs can be taken now."""
        if self._thread is None:
            raise NotReady("The image model is not loaded.", retry_after=RETRY_AFTER_SECONDS)
        if self.scheduler is not None:
            self.scheduler.check(self.name)
        if not self._thread.is_alive():
            raise NotReady(f"The image engine has failed ({self.error}); restart the server.")

    def load(self, preload: bool | None = None) -> None:
        """Ready the engine (blocking) and start its owner thread; with ``preload`` (default: ``load_on_start``)
        the scheduler loads the pipeline too, unless the memory budget has no room (then the first job loads it)."""
        self.renderer.prepare()
        if self.scheduler is not None:
            self.renderer.imports()  # before the measured load: the libraries are not the model's cost
            if self.settings.load_on_start if preload is None else preload:
                try:
                    self.scheduler.preload(self.name)
                except MemoryFull as exc:
                    log.warning("the image model loads on its first job: %s", exc.message)
        self._thread = threading.Thread(target=self._run, name="image-owner", daemon=True)
        self._thread.start()

    def _load_pipeline(self) -> Any:
        """Build and install the pipeline (the scheduler's thread: a load, or a rebuild after a failure)."""
        self.renderer.load()
        return self.renderer

    def _unload_pipeline(self, _: Any) -> None:
        """Let the pipeline go (the scheduler's thread; no job holds the model)."""
        self.renderer.unload()

    def preload(self, keep_alive: float | None = None, *, timeout: float | None = None) -> None:
        """Load the model without rendering (A1111's reload-checkpoint); blocking."""
        self.check_serving()
        if self.scheduler is not None:
            self.scheduler.preload(self.name, keep_alive, timeout=timeout)

    def release(self, wait: bool = True, *, if_idle: bool = False) -> None:
        """Unload the model as soon as no job holds it (A1111's unload-checkpoint)."""
        if self.scheduler is not None:
            self.scheduler.unload(self.name, wait=wait, timeout=self.settings.request_timeout, if_idle=if_idle)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the running job and what is queued; stop the owner thread."""
        if self._current is not None:
            self._current.cancel()
        self._end_queued("cancelled", "shutdown")
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _end_queued(self, state: JobState, error: str, failure: AipcError | None = None) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.end(state, error, failure)
                self._notify(job)

    def check(self, params: ImageParams) -> None:
        """Validate sizes, steps and counts against what the model and the settings allow."""
        if params.n > self.settings.image_max_n:
            raise InvalidRequest(f"At most {self.settings.image_max_n} images per request.", param="n")
        if params.steps > self.settings.image_max_steps:
            raise InvalidRequest(f"At most {self.settings.image_max_steps} steps.", param="steps")
        self.renderer.check(params)
        step, biggest = self.renderer.step_multiple, self.renderer.max_size
        for name, value in (("width", params.width), ("height", params.height)):
            if value < step or value > biggest or value % step:
                raise InvalidRequest(
                    f"{name} must be a multiple of {step} from {step} to {biggest}; got {value}.", param=name)

    def submit(self, params: ImageParams, owner: str | None = None) -> ImageJob:
        """Queue a job for ``owner``; Busy when the queue is full, NotReady while the pipeline is rebuilt."""
        self.check_serving()
        if params.width == NATIVE_SIZE:  # size "auto": the size the model was trained at, as far as allowed here
            step = self.renderer.step_multiple
            native = max(step, min(self.renderer.native_size, self.renderer.max_size) // step * step)
            width, height = self.renderer.static_size or (native, native)  # an NPU compiled for one size: that
            params = replace(params, width=width, height=height)
        self.check(params)
        self.store.check_free_space(self.settings.min_free_mb)
        job = ImageJob(params, owner=owner, names=[self.store.new_name() for _ in range(params.n)])
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

    def interrupt(self, owner: str | None = None) -> None:
        """Stop the running job, keeping its picture as far as it got (AUTOMATIC1111's /interrupt); only
        ``owner``'s, when one is named."""
        job = self._current
        if job is not None and (owner is None or job.owner == owner):
            job.interrupt()

    def skip(self, owner: str | None = None) -> None:
        """End the running job's current picture as far as it got and go on with the next (A1111's /skip)."""
        job = self._current
        if job is not None and (owner is None or job.owner == owner):
            job.skip()

    def _forget_old_jobs(self, keep: int = 256) -> None:
        if len(self._jobs) > keep:
            for job_id in [j.id for j in self._jobs.values() if j.finished][: len(self._jobs) - keep]:
                del self._jobs[job_id]

    # --- the owner thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled:
                job.end("cancelled")
                self._notify(job)
                continue
            lease = None
            if self.scheduler is not None:
                try:  # the job holds the model while it renders (loaded first if need be)
                    lease = self.scheduler.acquire(self.name, timeout=self.settings.request_timeout)
                except AipcError as exc:
                    job.end("failed", exc.message, exc)
                    self._notify(job)
                    continue
            recovery = self._serve(job, lease)
            if recovery is not None and not recovery.wait():
                self.error = "three rebuilds in a row failed"
                failure = NotReady(f"The image engine has failed ({self.error}); restart the server.")
                self._end_queued("failed", failure.message, failure)
                return

    def _serve(self, job: ImageJob, lease: Lease | None) -> Recovery | None:
        """Render one job, holding the model until it ends; the rebuild under way when the pipeline broke."""
        self._current = job
        job.state, job.started = "running", time.time()
        recovery: Recovery | None = None
        ending: tuple[JobState, str | None, AipcError | None] = ("done", None, None)
        try:
            self.renderer.render(job, self.store)
        except Interrupted:
            ending = ("cancelled", None, None)
        except Flagged:
            ending = ("failed", f"{FILTERED}: the safety checker flagged the image", None)
        except AipcError as exc:  # the job's own failure (a remote's answer, a request it refused)
            log.warning("image job %s failed: %s", job.id, exc.message)
            ending = ("failed", exc.message, exc)
        except Exception as exc:  # the pipeline raised: this job fails, and the pipeline is rebuilt
            log.exception("image job %s failed", job.id)
            if self.scheduler is not None:  # recovering before anyone sees the job fail
                recovery = self.scheduler.recover(self.name, exc)
            ending = ("failed", f"{type(exc).__name__}: {exc}", EngineFailure(
                "The image pipeline failed while rendering this picture and is being restarted; retry the request."))
        finally:
            self._current = None
            if lease is not None and self.scheduler is not None:  # before the job ends: whoever sees it end (and
                self.scheduler.release(lease, job.params.keep_alive)  # asks for the other model) finds it free
        job.end(*ending)
        self._notify(job)
        return recovery

    def _notify(self, job: ImageJob) -> None:
        for observe in self.observers:
            try:
                observe(job)
            except Exception:
                log.exception("an image observer failed")
