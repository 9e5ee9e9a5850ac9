"""The image engine: one job queue and owner thread over a renderer (local openvino-genai or optimum-intel, or a
remote A1111).

Every job has an id, a state, progress and can be cancelled; observers hear of each job as it ends. A renderer
supplies only what differs: loading its pipeline, checking a request against it, and rendering one job. A job the
renderer fails fails alone; an unexpected error from the pipeline also has the pipeline rebuilt (supervised: 503
with Retry-After meanwhile, ``failed`` after three rebuilds in a row fail).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aipc_chat.engines.contract import (
    FILTERED,
    RETRY_AFTER_SECONDS,
    EngineHealth,
    Flagged,
    ImageJob,
    ImageParams,
    Interrupted,
    JobState,
)
from aipc_chat.engines.residency import Keeper, Residency, Slot, weights_mb
from aipc_chat.engines.store import ImageStore
from aipc_chat.engines.supervisor import Supervisor
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
    sampler: str  # the sampler the last job used (A1111's name)
    local: bool  # holds its pipeline in this process (counted in the memory budget, unloaded when idle)

    def load(self) -> None:
        """Build the pipeline (blocking)."""

    def prepare(self) -> None:
        """Learn what checking requests needs (sizes, sampler) without building the pipeline."""

    def imports(self) -> None:
        """Import what building the pipeline needs (so that a load's measured cost is the model's alone)."""

    def rebuild(self) -> None:
        """Replace a pipeline that failed with a fresh one (blocking)."""

    def unload(self) -> bool:
        """Let the pipeline go after idling (its memory is released); False when there is nothing held here."""

    @property
    def loaded(self) -> bool:
        """Whether a pipeline is held (a remote renderer always says yes)."""

    def check(self, params: ImageParams) -> None:
        """Raise InvalidRequest for what this pipeline cannot do (beyond the engine's common bounds)."""

    def render(self, job: ImageJob, store: ImageStore) -> None:
        """Make the job's pictures and store them; raise ``Interrupted`` when the job is cancelled mid-way."""

    def unreachable(self) -> str | None:
        """Why the renderer cannot be used now (a remote that does not answer), or None."""

    def info(self) -> dict[str, Any]:
        """What the renderer serves."""


class ImageEngine:
    """Serves image jobs from one renderer on its own thread."""

    def __init__(self, settings: Settings, renderer: Renderer, store: ImageStore | None = None,
                 residency: Residency | None = None) -> None:
        self.settings = settings
        self.renderer = renderer
        self.residency = residency if residency is not None and renderer.local else Residency()
        self.slot = self.residency.add(Slot(
            "image", weights_mb(renderer.model_dir) if renderer.local else 0.0,
            keeper=Keeper(settings.keep_alive_seconds if renderer.local else None),
            idle=lambda: self._current is None and self._queue.empty()))
        self.store = store if store is not None else ImageStore(settings.data_dir / "images", settings.image_retention)
        self.supervisor = Supervisor("image")
        self.load_seconds: float | None = None
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

    @property
    def current(self) -> ImageJob | None:
        """The job rendering now."""
        return self._current

    @property
    def queue_depth(self) -> int:
        """Jobs waiting."""
        return self._queue.qsize()

    @property
    def restarts(self) -> int:
        """Pipelines rebuilt after a failure."""
        return self.supervisor.restarts

    def health(self) -> EngineHealth:
        """The engine's state; a remote renderer is asked whether it answers."""
        health = self.supervisor.health()
        if health.state != "ready":
            return health
        if self._thread is not None and not self._thread.is_alive():
            self.supervisor.set_failed("the owner thread is not running")
            return self.supervisor.health()
        problem = self.renderer.unreachable()
        return EngineHealth("unreachable", problem, health.restarts) if problem else health

    def check_serving(self) -> None:
        """Raise NotReady unless new jobs can be taken now."""
        if self._thread is None:
            raise NotReady("The image model is not loaded.", retry_after=RETRY_AFTER_SECONDS)
        self.supervisor.check_serving()

    def info(self) -> dict[str, Any]:
        """What the engine serves (for /ready, /sdapi/v1/sd-models)."""
        return self.renderer.info()

    def load(self) -> None:
        """Build the pipeline (blocking; unless ``load_on_start`` is off, or the memory budget has no room: then the
        first job builds it) and start the owner thread."""
        t0 = time.perf_counter()
        self.renderer.prepare()
        if self.settings.load_on_start:
            try:
                self._load_pipeline()
            except MemoryFull as exc:
                log.warning("the image model loads on its first job: %s", exc.message)
        self.load_seconds = time.perf_counter() - t0
        self._thread = threading.Thread(target=self._run, name="image-owner", daemon=True)
        self._thread.start()
        if self.renderer.loaded:
            self.supervisor.set_ready()
        else:
            self.supervisor.set_unloaded()

    def _load_pipeline(self) -> None:
        self.renderer.imports()
        with self.residency.loading(self.slot):
            self.renderer.load()

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
        keeper = self.slot.keeper
        while True:
            try:
                job = self._queue.get(timeout=0.5)
            except queue.Empty:
                if keeper.due():
                    self._unload()
                continue
            if job is None:
                return
            keeper.busy()
            self.residency.used(self.slot)
            if job.cancelled:
                job.end("cancelled")
                self._notify(job)
            elif self._ensure_loaded(job) and not self._serve(job):
                failure = NotReady(f"The image engine has failed ({self.supervisor.error}); restart the server.")
                self._end_queued("failed", failure.message, failure)
                return
            keeper.finished(job.params.keep_alive)

    def _unload(self) -> None:
        if not (self.renderer.local and self.renderer.loaded):
            self.slot.keeper.unloaded()
            return
        self.residency.unload(self.slot, self.renderer.unload)
        self.supervisor.set_unloaded()

    def _ensure_loaded(self, job: ImageJob) -> bool:
        """Load the pipeline for a job that came while it was unloaded (it waits); False when that failed (the
        job fails, and the next one tries again)."""
        if self.renderer.loaded:
            return True
        failure = self.supervisor.load_again(self._load_pipeline)
        if failure is None:
            return True
        job.end("failed", failure.message, failure)
        self._notify(job)
        return False

    def _serve(self, job: ImageJob) -> bool:
        """Render one job; False when its failure left an engine that cannot be rebuilt."""
        self._current = job
        job.state, job.started = "running", time.time()
        broken: Exception | None = None
        try:
            self.renderer.render(job, self.store)
        except Interrupted:
            job.end("cancelled")
        except Flagged:
            job.end("failed", f"{FILTERED}: the safety checker flagged the image")
        except AipcError as exc:  # the job's own failure (a remote's answer, a request it refused)
            log.warning("image job %s failed: %s", job.id, exc.message)
            job.end("failed", exc.message, exc)
        except Exception as exc:  # the pipeline raised: this job fails, and the pipeline is rebuilt
            log.exception("image job %s failed", job.id)
            failure = EngineFailure("The image pipeline failed while rendering this picture and is being restarted; "
                                    "retry the request.")
            job.end("failed", f"{type(exc).__name__}: {exc}", failure)
            broken = exc
        else:
            job.end("done")
        finally:
            self._current = None
            self._notify(job)
        return broken is None or self.supervisor.recover(broken, self.renderer.rebuild)

    def _notify(self, job: ImageJob) -> None:
        for observe in self.observers:
            try:
                observe(job)
            except Exception:
                log.exception("an image observer failed")
