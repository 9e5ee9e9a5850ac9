"""The engine contract: the one engine module the runtime, the orchestrator and the routes import.

It holds the request and result types that cross into and out of engines (``GenParams``, ``Delta``, ``Done``,
``LLMStream``, ``ImageParams``, ``ImageJob``), the health an engine reports, and the two protocols that the local
(openvino-genai, optimum-intel) and remote (OpenAI, AUTOMATIC1111) engines implement. Everything above the engines
works through these alone, as vLLM's serving classes work through ``EngineClient``. They are plain Python (threads,
no asyncio, no HTTP): ``submit`` is a blocking call that returns a thread-safe handle; the asyncio adapter that reads
it is the API side's (``serving/aio.py``).

Engine states (``EngineHealth.state``):

    loading     the pipeline is being built (at start, or on demand: then requests wait for it)
    ready       serving
    unloaded    let go after idling (or not loaded at start); the next request loads it
    recovering  the pipeline failed and is being rebuilt; new requests get 503 with Retry-After
    unreachable a remote engine does not answer (it is asked again on every /ready)
    failed      its last load failed (the next request tries again), or three rebuilds in a row failed (a restart
                is needed)

The state of a local model is its record in the model scheduler (``engines/scheduler.py``), the one owner of loads,
unloads, expiry, eviction and recovery.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from aipc_chat.engines.admission import Arrival, Arrivals
from aipc_chat.engines.store import ImageStore
from aipc_chat.engines.stream import Channel
from aipc_chat.errors import AipcError, Cancelled, ContentFiltered, EngineFailure

__all__ = [  # what the layers above the engines use, admission included
    "ALL_SAMPLERS", "FILTERED", "JSON_OBJECT", "NATIVE_SIZE", "RETRY_AFTER_SECONDS", "RUNTIME_SCHEDULES", "SAMPLERS",
    "SCHEDULES", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN",
    "Arrival", "Arrivals", "Delta", "Done", "EngineHealth", "EngineState", "Flagged", "GenParams",
    "ImageEngineClient", "ImageJob", "ImageParams", "ImageRuntime", "Interrupted", "JobState", "LLMEngineClient",
    "LLMStream", "SupervisedEngine", "TagConstraint", "Timing", "Tool", "ToolConstraint", "ToolSet",
    "constrains_whole_reply", "split_sampler"
]

EngineState = Literal["loading", "ready", "unloaded", "recovering", "unreachable", "failed"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FILTERED = "content_filter"
RETRY_AFTER_SECONDS = 5  # what a client is told to wait while a model loads or recovers
NATIVE_SIZE = -1  # ImageParams' width and height for size "auto": the size the model was trained at
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # around each call the model writes (Hermes')
JSON_OBJECT = '{"type": "object"}'  # JSON mode's schema (json_object, format "json"): any object, closed in time
ImageRuntime = Literal["genai", "optimum"]
# AUTOMATIC1111's sampler names and what runs each in a runtime: openvino-genai's scheduler types, diffusers'
# scheduler classes (any of them drives the OpenVINO models from Python).
SAMPLERS: dict[ImageRuntime, dict[str, str]] = {
    "genai": {
        "PLMS": "PNDM", "Euler": "EULER_DISCRETE", "Euler a": "EULER_ANCESTRAL_DISCRETE", "DDIM": "DDIM",
        "LCM": "LCM",  # no LMS: 2026.4's LMS_DISCRETE renders DDIM's pictures
    },
    "optimum": {
        "PLMS": "PNDMScheduler", "Euler": "EulerDiscreteScheduler", "Euler a": "EulerAncestralDiscreteScheduler",
        "DDIM": "DDIMScheduler", "LMS": "LMSDiscreteScheduler", "LCM": "LCMScheduler",
        "DPM++ 2M": "DPMSolverMultistepScheduler",
    },
}
ALL_SAMPLERS = tuple(dict.fromkeys(name for table in SAMPLERS.values() for name in table))
# A1111's schedules (1.9+ sends them apart from the sampler as ``scheduler``; older clients join them to the
# sampler's name, "DPM++ 2M Karras") and the diffusers scheduler options behind them. openvino-genai's schedulers
# take none of these sigma schedules (2026.4): only "automatic" there.
SCHEDULES: dict[str, dict[str, bool]] = {
    "automatic": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}
RUNTIME_SCHEDULES: dict[ImageRuntime, tuple[str, ...]] = {"genai": ("automatic",), "optimum": tuple(SCHEDULES)}


def split_sampler(name: str | None, schedule: str | None = None) -> tuple[str | None, str | None]:
    """(sampler, schedule) from A1111's names, joined ("DPM++ 2M Karras") or apart; names match case-insensitively
    (an unknown one is returned as it came, for the engine's check to name)."""
    schedule = schedule.strip().lower() if schedule else None
    if not name:
        return None, schedule
    by_lower = {sampler.lower(): sampler for sampler in ALL_SAMPLERS}
    wanted = name.strip().lower()
    if wanted in by_lower:
        return by_lower[wanted], schedule
    base, _, suffix = wanted.rpartition(" ")
    if base in by_lower and suffix in SCHEDULES and schedule in (None, "automatic", suffix):
        return by_lower[base], suffix
    return name, schedule


@dataclass(frozen=True)
class EngineHealth:
    """What an engine says of itself (``/ready``'s ``models.<kind>``)."""

    state: EngineState
    error: str | None = None
    restarts: int = 0
    retry_after: int | None = None  # seconds a client should wait while the engine recovers
    on_demand: bool = False  # loading again after an idle unload: requests are taken and wait for it


# --- the LLM -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagConstraint:
    """Free text, except that once ``begin`` appears its content must match ``regex`` and end with ``end``."""

    begin: str
    regex: str
    end: str


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and its parameters' JSON schema (as text)."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'


@dataclass(frozen=True)
class ToolSet:
    """The tools of a request and how the model may use them (OpenAI's ``tools``, ``tool_choice`` and
    ``parallel_tool_calls``; ``tool_choice: none`` is no ToolSet)."""

    tools: tuple[Tool, ...]
    choice: Literal["auto", "required", "function"] = "auto"  # the model decides; at least one call; ``function``
    parallel: bool = True  # more than one call in a reply
    function: str | None = None  # the one function to call (choice "function")

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the model may call under ``choice``."""
        if self.choice != "function":
            return self.tools
        return tuple(tool for tool in self.tools if tool.name == self.function)


@dataclass(frozen=True)
class ToolConstraint:
    """What the engine derives from a ToolSet for the grammar: each callable function with its arguments' grammar
    (``("ebnf", text)``, bounded so a call always ends in time, or ``("json_schema", text)`` where the schema is
    beyond the bounded subset)."""

    calls: tuple[tuple[str, str, str], ...]  # (name, "ebnf" | "json_schema", text)
    at_least_one: bool  # required or named: the answer is calls only
    parallel: bool
    think_first: bool = False  # a reasoning model thinks freely first, then calls (the think block is open)
    tokens: int = 0  # the most tokens one bounded call can take (its arguments and the markup around them)


@dataclass(frozen=True)
class GenParams:
    """Sampling and length parameters of one request, already validated."""

    max_tokens: int | None = None
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    reasoning_budget: int | None = None
    json_schema: str | None = None
    regex: str | None = None
    grammar: str | None = None
    tag: TagConstraint | None = None
    tools: ToolSet | None = None  # functions the model may call (their calls come back as <tool_call> blocks)
    tool_constraint: ToolConstraint | None = None  # set by the engine from ``tools``
    constraint_param: str = "response_format"  # the request field a refused constraint came from (for the 400)
    think: bool = True  # False: a reasoning model's think block is closed empty (it answers at once)
    split_reasoning: bool = True  # False: all text is answer (a plain-prompt completion)
    keep_alive: float | None = None  # seconds the model stays loaded after this request (inf: never); None: default


def constrains_whole_reply(params: GenParams) -> bool:
    """True when the whole reply is constrained (JSON, regex, grammar), leaving no room for reasoning."""
    return params.json_schema is not None or params.regex is not None or params.grammar is not None


@dataclass(frozen=True)
class Delta:
    """New text of a reply: reasoning and/or answer, and how many tokens made it."""

    reasoning: str
    content: str
    tokens: int


@dataclass
class Timing:
    """When a request was queued, started, got its first token and ended (monotonic seconds)."""

    queued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None

    @property
    def ttft(self) -> float | None:
        """Time to first token, queueing included."""
        return None if self.first_token is None else self.first_token - self.queued


@dataclass(frozen=True)
class Done:
    """The end of a reply."""

    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    timing: Timing


class LLMStream(Channel[Delta | Done]):
    """A request in flight: ``Delta``s and one final ``Done`` (or an error) arrive in it; ``cancel()`` stops it."""

    def __init__(self, request_id: str, prompt_tokens: int) -> None:
        super().__init__()
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens


class SupervisedEngine(Protocol):
    """The life cycle and health every engine has, local or remote, LLM or image."""

    def health(self) -> EngineHealth:
        """The engine's state now (a remote one is asked)."""

    def check_serving(self) -> None:
        """Raise NotReady (503, Retry-After while recovering) unless new work can be taken now; cheap."""

    def load(self, preload: bool | None = None) -> None:
        """Get ready to serve (blocking); with ``preload`` (default: ``load_on_start``) load the pipeline too."""

    def preload(self, keep_alive: float | None = None, *, timeout: float | None = None) -> None:
        """Load the pipeline without using it (a request with no work, the start); blocking, for ``timeout``
        seconds at most (None: however long the load takes, as at the start)."""

    def release(self, wait: bool = True, *, if_idle: bool = False) -> None:
        """Unload the pipeline as soon as no request holds it (Ollama's ``keep_alive: 0``, A1111's
        unload-checkpoint), or ``if_idle`` only if none holds it now; with ``wait``, block until it is unloaded."""

    def close(self) -> None:
        """Cancel what is in flight and stop."""

    def cancel_all(self) -> None:
        """Cancel all work in flight."""


class LLMEngineClient(SupervisedEngine, Protocol):
    """What the runtime, the orchestrator and the routes use of an LLM engine (local or remote)."""

    model_name: str
    device: str
    context_length: int
    reasons: bool  # the model writes <think> reasoning (split into reasoning_content); False: all is answer
    observers: list[Callable[[Done], None]]

    @property
    def active(self) -> int:
        """Requests generating now."""

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet generating."""

    @property
    def chat_template(self) -> str:
        """The model's chat template ("" when not known here)."""


    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens the templated messages take."""

    def submit(self, messages: list[dict[str, Any]], params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        """Validate and queue a request; errors are raised here, before anything streams.

        ``arrival`` is the admission handle the HTTP layer took when the request came in; it is settled once the
        request is queued (or refused).
        """

    def submit_prompt(self, prompt: str, params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        """Queue a prompt as it is, without the chat template (UnsupportedParameter where that cannot be done)."""


# --- images --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageParams:
    """One generation request, validated against the model by the engine's ``check``."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int | None = None
    n: int = 1
    sampler: str | None = None
    schedule: str | None = None  # A1111's scheduler ("karras", ...; None or "automatic": the sampler's own)
    keep_alive: float | None = None  # seconds the model stays loaded after this job (inf: never); None: default
    init_image: Any = None  # image to image: the starting picture (PIL, RGB, already at width x height)
    strength: float = 0.75  # image to image: how much of it is noised away (A1111's denoising_strength)


class Interrupted(Exception):
    """A renderer's signal: the running job was cancelled mid-way."""


class Flagged(Exception):
    """A renderer's signal: the pipeline's own safety checker flagged the image."""


@dataclass
class ImageJob:
    """A queued or running generation; the owner thread updates it, any thread reads it."""

    params: ImageParams
    owner: str | None = None  # the user who asked (its job is listed only to that user when users are separated)
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
    partial: bool = False  # interrupted the A1111 way: what was made so far is kept
    preview: bytes | None = field(default=None, repr=False)  # a PNG of the picture being made
    preview_step: int = 0
    latest_preview: tuple[bytes, int] | None = field(default=None, repr=False)  # (PNG, step), set as one
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _skip: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list[Callable[[ImageJob], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total_steps(self) -> int:
        """Steps of the whole job (steps x images)."""
        return self.params.steps * self.params.n

    @property
    def progress(self) -> float:
        """0..1."""
        return 1.0 if self.state == "done" else min(1.0, self.step / max(1, self.total_steps))

    def cancel(self) -> None:
        """Stop the job at its next step (or before it starts)."""
        self._cancel.set()

    def interrupt(self) -> None:
        """A1111's interrupt: stop at the next step, keeping the picture as far as it got."""
        self.partial = True
        self._cancel.set()

    def skip(self) -> None:
        """A1111's skip: end the current picture as far as it got, and go on with the next of the batch."""
        self._skip.set()

    def take_skip(self) -> bool:
        """Whether the current picture is to end now (the request is used up)."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False

    def set_preview(self, png: bytes, step: int) -> None:
        """A preview of the picture being made (kept until the next one)."""
        self.preview, self.preview_step = png, step
        self.latest_preview = (png, step)  # the two together, for a reader on another thread: one read, no tear

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancel.is_set()

    def end(self, state: JobState, error: str | None = None, failure: AipcError | None = None) -> None:
        """Owner thread: the job is over; tell whoever waits for it."""
        self.state, self.error, self.finished = state, error, time.time()
        if failure is not None:
            self.failure = failure
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def when_done(self, callback: Callable[[ImageJob], None]) -> None:
        """Call ``callback(job)`` once the job has ended (at once if it has; else from the owner thread)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

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

    def as_dict(self, url_for: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The JSON form (``GET /v1/images/jobs/{id}``)."""
        return {
            "id": self.id, "state": self.state, "step": self.step, "total_steps": self.total_steps,
            "progress": round(self.progress, 4), "seeds": self.seeds, "error": self.error,
            "images": [url_for(n) for n in self.images] if url_for else self.images,
            "created": self.created, "started": self.started, "finished": self.finished,
            "preview": base64.b64encode(self.preview).decode() if self.preview else None,
            "preview_step": self.preview_step if self.preview else None,
        }


@dataclass(frozen=True)
class RenderLimits:
    """What an image engine's model takes, known before the model loads (read from its configuration files).
    ``samplers`` is None where the engine cannot tell (a remote server decides for itself)."""

    max_size: int
    size_step: int  # width and height are multiples of this
    native_size: int  # the size it was trained at (what size "auto" means)
    static_size: tuple[int, int] | None  # the one size it takes (an NPU's static shapes), if any
    samplers: tuple[str, ...] | None
    default_sampler: str


class ImageEngineClient(SupervisedEngine, Protocol):
    """What the runtime, the orchestrator and the routes use of an image engine (local or remote)."""

    store: ImageStore
    observers: list[Callable[[ImageJob], None]]

    @property
    def model_name(self) -> str:
        """The model's name."""

    @property
    def device(self) -> str:
        """Where it runs ("remote" for a remote one)."""

    @property
    def model_dir(self) -> Path:
        """Where it was loaded from."""

    @property
    def sampler(self) -> str:
        """The sampler the last job used (A1111's name)."""

    @property
    def current(self) -> ImageJob | None:
        """The job rendering now."""

    @property
    def queue_depth(self) -> int:
        """Jobs waiting."""

    def limits(self) -> RenderLimits:
        """What its model takes: sizes, samplers (for a client's controls, and checks before a job is made)."""

    def submit(self, params: ImageParams, owner: str | None = None) -> ImageJob:
        """Validate and queue a job for ``owner``; Busy when the queue is full."""


    def get_job(self, job_id: str) -> ImageJob | None:
        """A recent job by id."""

    def interrupt(self, owner: str | None = None) -> None:
        """Cancel the running job (only if it is ``owner``'s, when one is named)."""

    def skip(self, owner: str | None = None) -> None:
        """End the running job's current picture as far as it got and go on with the next (A1111's skip)."""
