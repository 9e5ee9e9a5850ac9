"""The models this process serves: chooses, loads (in the background) and closes the engines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, cast

from aipc_chat.db import Database
from aipc_chat.engines.contract import (
    RETRY_AFTER_SECONDS,
    Arrivals,
    Done,
    ImageEngineClient,
    ImageJob,
    LLMEngineClient,
)
from aipc_chat.engines.factory import Engine, EngineFactory, PipelineWrapper
from aipc_chat.engines.llm_loop import capacity
from aipc_chat.engines.memory import rss_mb
from aipc_chat.engines.scheduler import Scheduler, Snapshot
from aipc_chat.engines.store import free_mb
from aipc_chat.errors import (
    Cancelled,
    HubUnreachable,
    MemoryFull,
    ModelSetupError,
    NotReady,
    NotServed,
    StartupError,
    StorageError,
    StoreUnavailable,
)
from aipc_chat.history import HistoryStore
from aipc_chat.orchestrator import Orchestrator
from aipc_chat.prompts import Prompts
from aipc_chat.provision.devices import available_devices, resolve_device
from aipc_chat.provision.gguf import check_gguf
from aipc_chat.provision.resolve import (
    Kind,
    Missing,
    ModelChoice,
    check_present,
    choose_model,
    missing_message,
    missing_models,
)
from aipc_chat.safety import PromptFilter
from aipc_chat.settings import Settings, env_name, public_url
from aipc_chat.team import SharedImageEngine, Team

if TYPE_CHECKING:
    from aipc_chat.engines.embedding import EmbeddingEngine

log = logging.getLogger(__name__)

# before the engine exists; then its health. "disabled": this server serves no model of the kind (error says why)
State = Literal["pending", "downloading", "loading", "ready", "failed", "disabled"]
ENABLE = {"llm": "AIPC_LLM_PATH (an OpenVINO folder or a .gguf file) or AIPC_LLM_REPO",
          "image": "AIPC_IMAGE_PATH (an OpenVINO Stable Diffusion folder) or AIPC_IMAGE_REPO"}
LOADER = "model-loader"  # the name of the thread that loads the models at start


@dataclass
class ModelStatus:
    """What /ready reports for one kind of model."""

    choice: ModelChoice
    device: str
    state: State = "pending"
    error: str | None = None
    load_seconds: float | None = None
    download: dict[str, int] | None = None  # bytes done / total while a missing model downloads
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, object]:
        """The JSON form."""
        out: dict[str, object] = {
            "model": self.choice.name, "source": self.choice.source, "device": self.device,
            "state": self.state, "error": self.error, "load_seconds": self.load_seconds, "download": self.download,
        }
        if self.choice.endpoint:
            out["endpoint"] = public_url(self.choice.endpoint)  # credentials in the URL stay out of /ready
        return out


class Runtime:
    """Owns the LLM and image engines of one server process."""

    def __init__(self, settings: Settings, *, pipelines: PipelineWrapper | None = None) -> None:
        self.settings = settings
        self.llm: LLMEngineClient | None = None
        self.image: ImageEngineClient | None = None
        self.status: dict[Kind, ModelStatus] = {
            "llm": ModelStatus(choose_model(settings, "llm"), settings.llm_device),
            "image": ModelStatus(choose_model(settings, "image"), settings.image_device),
        }
        self._closed = threading.Event()
        self._publishing = threading.Lock()  # a load that ends as the runtime closes: closed here or by the loader
        self.on_fatal: Callable[[str], None] | None = None  # the CLI stops the server when a model cannot be had
        self.on_loaded: Callable[[], None] | None = None  # the CLI says the server is ready, once, with its address
        self.fatal: str | None = None
        self.llm_observers: list[Callable[[Done], None]] = []
        self.image_observers: list[Callable[[ImageJob], None]] = []
        self.arrivals = Arrivals()  # LLM requests the HTTP layer is reading: the engine's admission waits for them
        limit = settings.memory_limit_bytes
        # the one owner of the local models' lifecycle (loads, unloads, expiry, eviction, recovery)
        self.scheduler = Scheduler(limit / 2**20 if limit else None, max_waiting=capacity(settings))
        self.scheduler.start()
        self.engines = EngineFactory(settings, self.arrivals, pipelines, self.scheduler)
        url = settings.database_url.get_secret_value() if settings.database_url is not None else None
        # history here, or in the database several front ends share (with their image jobs and rate limits)
        self.team: Team | None = None
        try:
            self.database = Database(url) if url else Database.sqlite(settings.data_dir / "history.sqlite3")
            if url:
                self.team = Team(self.database, settings.worker_name, dead_after=settings.worker_timeout)
                self.team.start()  # this name's work from an earlier life is settled; dead front ends' by the sweep
        except StoreUnavailable as exc:
            raise StartupError(f"{exc.message.split('; retry')[0]}: check AIPC_DATABASE_URL, and that the "
                               "database server is running.") from None
        except StorageError as exc:  # the SQLite file's folder refuses writes
            raise StartupError(exc.message) from None
        except ModuleNotFoundError as exc:
            raise StartupError(f"AIPC_DATABASE_URL needs {exc.name}, which is not installed: "
                               "pip install \"aipc-chat[team]\"") from None
        self.history = HistoryStore(self.database)
        if not url:
            interrupted = self.history.interrupt_pending()
            if interrupted:
                log.warning("%d picture(s) were in flight when the server last stopped: marked interrupted",
                            interrupted)
        self.embedding: EmbeddingEngine | None = None
        # the embedding model's state before its engine exists (AIPC_EMBEDDING_PATH): None when none is served
        self.embedding_status: dict[str, object] | None = None if settings.embedding_path is None else {
            "model": settings.embedding_name or settings.embedding_path.name, "source": "local",
            "device": settings.embedding_device, "state": "pending", "error": None}
        self.orchestrator = Orchestrator(
            self.require_llm, self.require_image, self.history, Prompts.load(settings.system_prompt_file),
            PromptFilter.load(settings.blocked_terms_file), history_limit=settings.conversation_history_limit,
            max_tokens=min(settings.chat_max_tokens, settings.max_tokens_limit), timeout=settings.request_timeout)
        for kind, status in self.status.items():
            if status.choice.source == "none":
                self._disable(kind, f"switched off ({'AIPC_LLM_REPO' if kind == 'llm' else 'AIPC_IMAGE_REPO'}=none)")

    def check(self) -> None:
        """Fail fast (StartupError) when a device is absent, or a model asked for is missing and cannot be
        downloaded; every missing model is named at once, each with what fetches it. A default model that cannot be
        had is left out (the other kind is served) unless both are."""
        self._check_devices()
        missing = {m.role: m for m in missing_models(self.settings)}
        problems: dict[Kind, Missing | ModelSetupError] = {}
        hub_problem: str | None = None
        for kind in self._served():
            found: Missing | ModelSetupError | None
            try:
                found = self._check_one(self.status[kind], missing.get(kind))
            except HubUnreachable as exc:  # one reason for every model the hub would have given
                hub_problem, found = exc.reason, missing[kind]
            except ModelSetupError as exc:
                found = exc
            if found is not None:
                problems[kind] = found
        required = [kind for kind in problems if not self.status[kind].choice.optional]
        nothing_left = len(problems) + sum(s.state == "disabled" for s in self.status.values()) == len(self.status)
        if required or (problems and nothing_left):
            raise _startup_problem(list(problems.values()), hub_problem)
        for kind, found in problems.items():
            self._disable(kind, (found.describe() if isinstance(found, Missing) else str(found)).rstrip("."))
        if all(s.state == "disabled" for s in self.status.values()):
            raise ModelSetupError("Both AIPC_LLM_REPO and AIPC_IMAGE_REPO are none: there is nothing to serve.")

    def _check_devices(self) -> None:
        """An absent device, or the optimum runtime without its extra, stops the start whatever the models."""
        devices = available_devices()
        for kind, status in self.status.items():
            if status.state == "disabled" or status.choice.source == "remote":
                continue
            status.device = resolve_device(status.device, devices, kind)
            if kind == "image":
                check_image_runtime(self.settings)

    def _disable(self, kind: Kind, why: str) -> None:
        status = self.status[kind]
        status.state, status.error = "disabled", why
        log.warning("not serving %s: %s. Set %s to serve one.", "chat" if kind == "llm" else "pictures", why,
                    ENABLE[kind])
        if kind == "image":
            self.orchestrator.disable_images()

    def _check_one(self, status: ModelStatus, missing: Missing | None) -> Missing | None:
        """What keeps one model from serving, if anything: a model that is here must be one openvino-genai runs
        (raises), one that is not must be one the hub will give (it downloads as it loads; the hub's refusal is
        raised)."""
        choice = status.choice
        if missing is None:
            if choice.gguf and choice.path is not None:
                check_gguf(choice.path)  # an architecture or quantization openvino-genai cannot run: say so now
            return None
        if choice.source != "repo":
            return missing
        if not self.settings.auto_download_models:
            return replace(missing, remedy=f"{missing.remedy} ({env_name('auto_download_models')} is off)")
        from aipc_chat.provision.hub import probe_repo

        repo, revision, folder = choice.hub_target()
        probe_repo(repo, revision, folder, kind=choice.kind, token=self._token())
        return None

    @staticmethod
    def _needs_download(choice: ModelChoice) -> bool:
        """A hub model is complete when its manifest (written last) checks out."""
        from aipc_chat.provision.hub import verify_manifest  # huggingface_hub: imported when a hub model is used

        return choice.path is None or bool(verify_manifest(choice.path))

    def _token(self) -> str | None:
        return self.settings.hf_token.get_secret_value() if self.settings.hf_token else None

    def _download(self, kind: Kind, status: ModelStatus) -> None:
        """Fetch a missing hub model (progress in /ready); a failure stops the server with the reason."""
        repo, revision, folder = status.choice.hub_target()
        status.state, status.download = "downloading", {"done": 0, "total": 0}

        def progress(done: int, total: int) -> None:
            status.download = {"done": done, "total": total}
            if self._closed.is_set():
                raise ModelSetupError("The server is shutting down.")

        from aipc_chat.provision.hub import download_model

        log.info("downloading the %s model %s@%s into %s", kind, repo, revision, folder)
        download_model(repo, revision, folder, kind=kind, token=self._token(), progress=progress)

    def start_loading(self) -> None:
        """Load both models on a background thread so /health and /ready answer meanwhile."""
        threading.Thread(target=self.load, name=LOADER, daemon=True).start()

    def load(self) -> None:
        """Load both models, each on its own thread (blocking until both are loaded or failed).

        The image engine gets ready (its configuration, its imports) while the LLM loads; the scheduler loads the
        pipelines one at a time, the LLM first (it gets the room when both do not fit), so each one's measured size is
        its own. Each model serves as soon as it is ready. Then ``on_loaded`` is called, unless a model could not be
        had (``fatal``: the server stops) or the runtime closed meanwhile.
        """
        import openvino  # noqa: F401  # once here, so the two loaders do not both import it at the same time

        llm_done = threading.Event()
        if "llm" not in self._served():
            llm_done.set()

        def load_one(kind: Kind) -> None:
            try:
                self._load_one(kind, after=llm_done if kind == "image" else None)
            finally:
                if kind == "llm":
                    llm_done.set()

        loaders = [threading.Thread(target=load_one, args=(kind,), name=f"load-{kind}", daemon=True)
                   for kind in self._served()]
        if self.embedding_status is not None:
            loaders.append(threading.Thread(target=self._load_embedding, args=(llm_done,), name="load-embedding",
                                            daemon=True))
        for loader in loaders:
            loader.start()
        for loader in loaders:
            loader.join()
        if self.on_loaded is not None and self.fatal is None and not self._closed.is_set():
            self.on_loaded()

    def _served(self) -> list[Kind]:
        return [kind for kind, status in self.status.items() if status.state != "disabled"]

    def _load_one(self, kind: Kind, after: threading.Event | None = None) -> None:
        """Build and load one engine; its pipeline only ``after`` the other one's (the engine gets ready first)."""
        status = self.status[kind]
        status.state = "loading"
        t0 = time.perf_counter()
        try:
            engine = self._make_engine(kind, status)
            engine.observers = self.llm_observers if kind == "llm" else self.image_observers
            engine.load(preload=after is None and self.settings.load_on_start)
            if after is not None and self.settings.load_on_start:
                after.wait()
                try:
                    engine.preload()
                except MemoryFull as exc:
                    log.warning("the %s model loads on its first request: %s", kind, exc.message)
        except ModelSetupError as exc:
            log.error("%s", exc)
            status.state, status.error = "failed", str(exc)
            self.fatal = str(exc)
            if self.on_fatal is not None:
                self.on_fatal(str(exc))
            return
        except Cancelled:  # the server began shutting down while the model loaded
            log.debug("loading the %s model stopped: the server is shutting down", kind)
            return
        except Exception as exc:
            log.exception("loading the %s model failed", kind)
            status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        if not self._publish(kind, engine):
            return
        status.load_seconds = round(time.perf_counter() - t0, 3)
        status.state = "ready"

    def _publish(self, kind: Kind, engine: Engine) -> bool:
        """Make a loaded engine the one that serves, or close it when the runtime closed while it loaded."""
        with self._publishing:
            late = self._closed.is_set()
            if not late and kind == "llm":
                self.llm = engine  # type: ignore[assignment]
            elif not late:  # in a team, jobs the other front ends run are seen and steered through this one
                image = cast(ImageEngineClient, engine)
                self.image = cast(ImageEngineClient, SharedImageEngine(image, self.team)) if self.team else image
        if late:
            log.debug("the %s model finished loading after shutdown began: closed", kind)
            engine.close()
        return not late

    def _make_engine(self, kind: Kind, status: ModelStatus) -> Engine:
        choice = status.choice
        if choice.source == "repo" and self.settings.auto_download_models and self._needs_download(choice):
            self._download(kind, status)
            status.state = "loading"
        if choice.source == "remote":
            status.device = "remote"
        else:
            status.device = resolve_device(status.device, available_devices(), kind)
            check_present(choice, self.settings)
        return self.engines(kind, choice, status.device)

    def engine(self, kind: Kind) -> Engine | None:
        """The loaded engine of a kind, if any."""
        return self.llm if kind == "llm" else self.image

    def describe(self, snapshot: Snapshot | None = None) -> dict[str, dict[str, object]]:
        """Per kind: the model, its state and, once loaded, what it is doing now (a remote engine is asked). The
        local models' states, sizes and expiry come from one snapshot of the scheduler."""
        out: dict[str, dict[str, object]] = {kind: status.as_dict() for kind, status in self.status.items()}
        snap = snapshot if snapshot is not None else self.scheduler.snapshot()
        for kind in self.status:
            engine = self.engine(kind)
            if engine is None:
                continue
            health = engine.health()
            out[kind].update(model=engine.model_name or out[kind]["model"], state=health.state,
                             error=health.error, restarts=health.restarts)
            if health.retry_after is not None:
                out[kind]["retry_after"] = health.retry_after
            if health.on_demand:
                out[kind]["on_demand"] = True
            view = snap.models.get(kind)
            if view is not None:
                left = None if view.expires_in is None else round(view.expires_in, 1)  # None: held, or never
                out[kind].update(resident_mb=view.size_mb, held_by=view.refs, keep_alive_left=left)
                if snap.limit_mb is not None and view.cost_mb > snap.limit_mb:
                    out[kind].update(state="failed", error=f"it needs about {view.cost_mb:.0f} MB, more than "
                                     "AIPC_MEMORY_LIMIT allows")
        if self.llm is not None:
            out["llm"]["active_requests"] = self.llm.active
            out["llm"]["context_length"] = self.llm.context_length
        if self.image is not None:
            out["image"]["active_jobs"] = int(self.image.current is not None)
            out["image"]["queued_jobs"] = self.image.queue_depth
        if self.embedding_status is not None:
            out["embedding"] = self._describe_embedding(snap)
        return out

    def _describe_embedding(self, snap: Snapshot) -> dict[str, object]:
        assert self.embedding_status is not None
        out = dict(self.embedding_status)
        if self.embedding is not None:
            health = self.embedding.health()
            out.update(state=health.state, error=health.error, resident_mb=snap.models["embedding"].size_mb,
                       dimensions=self.embedding.dimensions)
            if health.retry_after is not None:
                out["retry_after"] = health.retry_after
        return out

    def memory(self) -> dict[str, object]:
        """The memory budget for /ready: the limit, what the resident models count against it, the process RSS."""
        snap = self.scheduler.snapshot()
        limit = snap.limit_mb
        return {"limit_mb": round(limit, 1) if limit is not None else None,
                "models_mb": snap.counted_mb, "process_rss_mb": round(rss_mb(), 1)}

    def storage(self) -> dict[str, object]:
        """The data folder's state for /ready (it does not change /ready's status: that is the models')."""
        free = free_mb(self.settings.data_dir)
        minimum = self.settings.min_free_mb
        low = bool(minimum) and free is not None and free < minimum
        out: dict[str, object] = {"data_dir": str(self.settings.data_dir), "free_mb": free,
                                  "min_free_mb": minimum, "state": "low" if low else "ok"}
        if self.team is not None:  # a front end whose shared database does not answer cannot serve: not ready
            problem = self.team.healthy()
            out["database"] = {"url": self.database.label, "worker": self.team.name,
                               "state": "unreachable" if problem else "ok", "error": problem}
        if self.image is not None and self.settings.image_store_url:  # pictures cannot be kept while it is away
            problem = self.image.store.check()
            out["image_store"] = {"url": self.settings.image_store_url, "state": "unreachable" if problem else "ok",
                                  "error": problem}
        return out

    @property
    def ready(self) -> bool:
        """True when every model is ready, as ``/ready`` sees it (remote engines are asked)."""
        return all_ready(self.describe())

    def require_llm(self) -> LLMEngineClient:
        """The LLM engine, or NotReady (with Retry-After while it loads or recovers)."""
        if self.llm is None:
            raise _not_ready(self.status["llm"])
        self.llm.check_serving()
        return self.llm

    def _load_embedding(self, after: threading.Event) -> None:
        """Convert the embedding model if need be (once), get it ready, then load it after the LLM."""
        from aipc_chat.engines.embedding import EmbeddingEngine, prepare_embedding_model

        status, s = self.embedding_status, self.settings
        assert status is not None
        assert s.embedding_path is not None
        status["state"] = "loading"
        try:
            folder = prepare_embedding_model(s.embedding_path, s.models_dir)
            engine = EmbeddingEngine(s, folder, str(status["model"]), s.embedding_device, scheduler=self.scheduler)
            engine.load(preload=False)
        except Exception as exc:
            log.exception("the embedding model could not be set up")
            status["state"], status["error"] = "failed", f"{type(exc).__name__}: {exc}"
            return
        with self._publishing:
            if not self._closed.is_set():
                self.embedding = engine
        status["state"] = "ready"  # from here its state is the scheduler's (a failed load is retried on demand)
        if s.load_on_start:
            after.wait()
            try:
                engine.preload()
            except Exception as exc:  # noqa: BLE001  # the scheduler's record says why; the next request retries
                log.warning("the embedding model did not load at start: %s", exc)

    def require_embedding(self) -> EmbeddingEngine:
        """The embedding engine; NotServed when none is configured, NotReady while it loads or after it failed."""
        status = self.embedding_status
        if status is None:
            raise NotServed("This server serves no embedding model: set AIPC_EMBEDDING_PATH (an OpenVINO or Hugging "
                            "Face sentence-transformers folder) and restart it to serve one.")
        if self.embedding is None:
            if status["state"] == "failed":
                raise NotReady(f"The embedding model failed to load: {status['error']}")
            raise NotReady("The embedding model is loading; retry shortly.", retry_after=RETRY_AFTER_SECONDS)
        self.embedding.check_serving()
        return self.embedding

    def require_image(self) -> ImageEngineClient:
        """The image engine, or NotReady (with Retry-After while it loads or recovers)."""
        if self.image is None:
            raise _not_ready(self.status["image"])
        self.image.check_serving()
        return self.image

    def interrupt_all(self) -> None:
        """Cancel every request and job in flight (shutdown): their streams end with a Cancelled error."""
        if self.llm is not None:
            self.llm.cancel_all()
        if self.image is not None:
            self.image.cancel_all()

    def close(self) -> None:
        """Stop the engines (in-flight work is cancelled).

        A load still under way is not waited for (compiling a model can take minutes, and Ctrl-C should not): the
        loaders are daemon threads, an engine that finishes loading later is closed by its loader (``_publish``),
        and the CLI ends the process without waiting for them (``loading_in_background``).
        """
        with self._publishing:
            self._closed.set()
            engines = (self.llm, self.image)
        self.scheduler.close()  # first: an owner thread waiting for a load hears the server is shutting down
        for engine in engines:
            if engine is not None:
                engine.close()
        if self.team is not None:
            self.team.close()
        self.history.close()


def loading_in_background() -> bool:
    """Whether a start-up load is still under way in this process (perhaps inside OpenVINO's native code)."""
    return any(thread.name == LOADER and thread.is_alive() for thread in threading.enumerate())


def _startup_problem(problems: list[Missing | ModelSetupError], hub_problem: str | None) -> ModelSetupError:
    """One error for everything that stops the start: every missing model with what fetches it, then any other
    problem (a gated repository, a model openvino-genai cannot run) as it was said."""
    missing = [p for p in problems if isinstance(p, Missing)]
    errors = [p for p in problems if isinstance(p, ModelSetupError)]
    if not missing and len(errors) == 1:
        return errors[0]
    said = [missing_message(missing, hub_problem=hub_problem)] if missing else []
    return ModelSetupError(" ".join(said + [str(e) for e in errors]))


def check_image_runtime(settings: Settings) -> None:
    """The optimum image runtime needs its extra: say so at start, not when the first picture loads."""
    import importlib.util

    if settings.image_runtime == "optimum" and importlib.util.find_spec("optimum") is None:
        raise ModelSetupError('AIPC_IMAGE_RUNTIME=optimum needs optimum-intel: pip install "aipc-chat[optimum]" '
                              "(or use the default runtime, genai).")


def stores_ok(storage: dict[str, object]) -> bool:
    """Whether the shared database and object storage (where used) answer, as ``Runtime.storage`` says."""
    return all(part.get("state") != "unreachable" for part in storage.values() if isinstance(part, dict))


def all_ready(models: dict[str, dict[str, object]]) -> bool:
    """Whether every model ``Runtime.describe`` lists is ready (or not served at all)."""
    return all(m["state"] in ("ready", "unloaded", "disabled") or (m["state"] == "loading" and m.get("on_demand"))
               for m in models.values())


def retry_after(models: dict[str, dict[str, object]]) -> int | None:
    """Seconds a client should wait before asking again, when a model is on its way to ready (not failed)."""
    waits = [int(m["retry_after"]) for m in models.values()  # type: ignore[call-overload]
             if m.get("retry_after") is not None and m["state"] != "failed"]
    pending = any(m["state"] in ("pending", "downloading", "loading") for m in models.values())
    return max(waits) if waits else (RETRY_AFTER_SECONDS if pending else None)


def _not_ready(status: ModelStatus) -> NotReady:
    if status.state == "disabled":
        what = "chat model (LLM)" if status.choice.kind == "llm" else "image model"
        return NotServed(f"This server serves no {what}: {status.error}. Set {ENABLE[status.choice.kind]} and "
                         "restart it to serve one.")
    if status.state == "failed":
        return NotReady(f"The {status.choice.kind} model failed to load: {status.error}")
    return NotReady(f"The {status.choice.kind} model '{status.choice.name}' is {status.state}; retry shortly.",
                    retry_after=RETRY_AFTER_SECONDS)
