"""The in-process LLM engine over openvino-genai: one owner thread, continuous batching, streamed deltas.

On CPU and GPU the owner thread drives a ``ContinuousBatchingPipeline`` (``add_request`` / ``step``), so several
requests make progress together. On NPU it drives an ``LLMPipeline`` compiled for static shapes and serves one
request at a time. Either way a request is a ``LLMStream`` the caller iterates from asyncio and can cancel.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aipc_chat.engines import admission
from aipc_chat.engines.bytelevel import ByteLevelDecoder
from aipc_chat.engines.stream import ThreadToAsync
from aipc_chat.errors import (
    Busy,
    Cancelled,
    ContextLengthExceeded,
    EngineFailure,
    InvalidRequest,
    NotReady,
)
from aipc_chat.reasoning import THINK_OPEN, ReasoningSplitter, strip_reasoning
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

MAX_CONTEXT_DEFAULT = 32768
THINK_CLOSE_TEXT = "\n</think>\n\n"
MIN_SAMPLING_TEMPERATURE = 1e-5  # below this, sampling is argmax in effect (and 1e-50 is 0 in float32): greedy
HANDOFF_SECONDS = 0.010  # the longest the owner waits, per step, for waiting clients to be sent their tokens
HANDOFF_MIN_STEP_SECONDS = 0.005  # steps shorter than this are not worth a hand-off (it costs ~0.5 ms)
ARRIVAL_POLL_SECONDS = 0.001  # while requests are on their way, how often the owner looks whether they still are


@dataclass(frozen=True)
class TagConstraint:
    """Free text, except that once ``begin`` appears its content must match ``regex`` and end with ``end``."""

    begin: str
    regex: str
    end: str


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


class LLMStream(ThreadToAsync[Delta | Done]):
    """A request in flight: iterate it for ``Delta``s and one final ``Done``; ``cancel()`` to stop it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request_id: str, prompt_tokens: int) -> None:
        super().__init__(loop)
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens


class IncrementalDetokenizer:
    """Text deltas from a growing token list, emitted as soon as they are final.

    Decodes a short window (a few tokens of context, then the new ones) and gives the text that window adds, holding
    back only an incomplete UTF-8 sequence (a trailing U+FFFD). openvino-genai's TextStreamer waits a few tokens
    before it prints, which costs a real model's first token ~100 ms of TTFT; this waits for nothing it need not.
    """

    CONTEXT = 5

    def __init__(self, decode: Callable[[list[int]], str], context: list[int]) -> None:
        self._decode = decode
        self._ids = list(context[-self.CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, ids: list[int]) -> str:
        """Add tokens; return the text they complete (maybe empty)."""
        before, after = self.extend(ids)
        return self.take(self._decode(before), self._decode(after))

    def extend(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """Add tokens; return the two windows ``take`` needs decoded (batch them with other streams')."""
        self._ids.extend(ids)
        return self._ids[self._prefix : self._read], self._ids[self._prefix :]

    def take(self, before: str, after: str) -> str:
        """Given the texts of ``extend``'s windows, return the new final text (maybe empty)."""
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 4 * self.CONTEXT:  # keep the window short: decoding stays O(1) per step
            drop = self._prefix - self.CONTEXT
            self._ids, self._prefix, self._read = self._ids[drop:], self._prefix - drop, self._read - drop
        return after[len(before) :]


@dataclass
class _Request:
    """Owner-thread state of one request."""

    stream: LLMStream
    prompt_ids: list[int]
    config: Any  # openvino_genai.GenerationConfig
    max_new_tokens: int
    budget: int | None
    splitter: ReasoningSplitter
    timing: Timing
    handle: Any = None
    detok: IncrementalDetokenizer | None = None
    generated: list[int] = field(default_factory=list)
    think_tokens: int = 0
    forced_tokens: int = 0
    forced: bool = False  # the think block was closed by the engine (once at most)
    unsent_tokens: int = 0
    text_out: list[str] = field(default_factory=list)


def scheduler_config(settings: Settings) -> Any:
    """The continuous-batching scheduler configuration for these settings."""
    import openvino_genai as ov_genai

    cfg = ov_genai.SchedulerConfig()
    cfg.cache_size = settings.kv_cache_gb
    cfg.max_num_seqs = settings.max_num_seqs
    cfg.enable_prefix_caching = settings.prefix_caching
    cfg.dynamic_split_fuse = True
    return cfg


def device_properties(settings: Settings, device: str) -> dict[str, Any]:
    """OpenVINO properties for compiling the LLM on ``device`` (compile cache, NPU static shapes)."""
    props: dict[str, Any] = {"CACHE_DIR": str(settings.compile_cache_dir / "llm")}
    if device == "NPU":
        props.update(
            MAX_PROMPT_LEN=settings.npu_max_prompt_len,
            MIN_RESPONSE_LEN=settings.npu_min_response_len,
            GENERATE_HINT="BEST_PERF",
        )
    return props


def generation_config(params: GenParams, max_new_tokens: int) -> Any:
    """Translate validated parameters into an openvino-genai GenerationConfig."""
    import openvino_genai as ov_genai

    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens = max_new_tokens
    cfg.ignore_eos = params.ignore_eos
    if params.temperature >= MIN_SAMPLING_TEMPERATURE:
        cfg.do_sample = True
        cfg.temperature = params.temperature
        cfg.top_p = params.top_p
        if params.top_k:
            cfg.top_k = params.top_k
    else:
        cfg.do_sample = False
    if params.seed is not None:
        cfg.rng_seed = params.seed
    if params.stop:
        cfg.stop_strings = set(params.stop)
    cfg.presence_penalty = params.presence_penalty
    cfg.frequency_penalty = params.frequency_penalty
    cfg.repetition_penalty = params.repetition_penalty
    structured = structured_output_config(params)
    if structured is not None:
        cfg.structured_output_config = structured
    return cfg


def checked_generation_config(params: GenParams, max_new_tokens: int) -> Any:
    """``generation_config``, validated by openvino-genai itself: what it would refuse is a 400 here, not a failure
    on the owner thread (values Python accepts can still round to 0 in the pipeline's float32, e.g. 1e-100)."""
    config = generation_config(params, max_new_tokens)
    try:
        config.validate()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]  # openvino's message ends with the human-readable sentence
        named = ("max_new_tokens", "repetition_penalty", "top_p", "top_k", "temperature", "presence_penalty",
                 "frequency_penalty")
        param = next((name for name in named if name in reason), None)
        param = "max_tokens" if param == "max_new_tokens" else param  # the OpenAI name the client sent
        raise InvalidRequest(f"Invalid generation parameters: {reason}", param=param) from None
    return config


def constrains_whole_reply(params: GenParams) -> bool:
    """True when the whole reply is constrained (JSON, regex, grammar), leaving no room for reasoning."""
    return params.json_schema is not None or params.regex is not None or params.grammar is not None


def structured_output_config(params: GenParams) -> Any | None:
    """The structured-output constraint a request asks for, if any."""
    if not constrains_whole_reply(params) and params.tag is None:
        return None
    import openvino_genai as ov_genai

    so = ov_genai.StructuredOutputConfig()
    if params.tag is not None:
        tag = ov_genai.StructuredOutputConfig.Tag(
            params.tag.begin, ov_genai.StructuredOutputConfig.Regex(params.tag.regex), params.tag.end)
        so.structural_tags_config = ov_genai.StructuredOutputConfig.TriggeredTags(
            triggers=[params.tag.begin], tags=[tag], stop_after_first=True)
    elif params.json_schema is not None:
        so.json_schema = params.json_schema
    elif params.regex is not None:
        so.regex = params.regex
    else:
        so.grammar = params.grammar
    return so


def _model_config(model_dir: Path) -> dict[str, Any] | None:
    """The model's config.json, or None when it cannot be read."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _context_length(config: dict[str, Any] | None, configured: int | None) -> int:
    if configured:
        return configured
    if config is None:
        return 4096
    try:
        return min(int(config.get("max_position_embeddings", MAX_CONTEXT_DEFAULT)), MAX_CONTEXT_DEFAULT)
    except (TypeError, ValueError):
        return 4096


class LLMEngine:
    """Serves chat requests from one openvino-genai pipeline on its own thread."""

    def __init__(self, settings: Settings, model_dir: Path, model_name: str, device: str) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.model_name = model_name
        self.device = device
        self._config = _model_config(model_dir)
        self.context_length = _context_length(self._config, settings.context_length)
        self.load_seconds: float | None = None
        self._tokenizer: Any = None
        self._pipe: Any = None
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._pending = 0  # submitted and not finished: admitted requests, running or waiting
        self._pending_lock = threading.Lock()
        self._close_ids: list[int] = []
        self._eos_id = -1
        self.active = 0  # generating right now
        self.observers: list[Callable[[Done], None]] = []  # called on the owner thread for each finished request
        self._live: set[LLMStream] = set()
        self._table_decode: ByteLevelDecoder | None = None  # byte-level BPE: decode by table lookup
        self.failure: str | None = None  # set if the owner thread died: the engine serves nothing more
        self.arrivals = admission.Arrivals()  # requests on their way; the runtime shares its own with the HTTP layer

    @property
    def capacity(self) -> int:
        """Requests admitted at once: generating plus waiting."""
        return self.settings.max_num_seqs + self.settings.llm_queue_size

    def cancel_all(self) -> None:
        """Cancel every request in flight (the owner thread drops them at its next step)."""
        for stream in list(self._live):
            stream.cancel()

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet generating."""
        return max(0, self._pending - self.active)

    @property
    def serial(self) -> bool:
        """True on NPU: one request at a time through LLMPipeline."""
        return self.device == "NPU"

    def load(self) -> None:
        """Compile the pipeline (blocking) and start the owner thread."""
        import openvino_genai as ov_genai

        t0 = time.perf_counter()
        props = device_properties(self.settings, self.device)
        if self.serial:
            self._pipe = ov_genai.LLMPipeline(str(self.model_dir), self.device, **props)
        else:
            self._pipe = ov_genai.ContinuousBatchingPipeline(
                str(self.model_dir), scheduler_config(self.settings), self.device, props
            )
        self._tokenizer = self._pipe.get_tokenizer()
        self._table_decode = ByteLevelDecoder.load(self.model_dir, self._decode_with_openvino,
                                                   (self._config or {}).get("vocab_size"))
        log.info("LLM detokenizing with %s", "a byte-level table" if self._table_decode else "openvino-tokenizers")
        self._close_ids = self._encode(THINK_CLOSE_TEXT)
        self._eos_id = int(self._tokenizer.get_eos_token_id())
        if self.settings.llm_warmup:
            self._warm_up()
        self.load_seconds = time.perf_counter() - t0
        self._thread = threading.Thread(target=self._run, name="llm-owner", daemon=True)
        self._thread.start()
        log.info("LLM %s loaded on %s in %.2f s (context %d)", self.model_name, self.device,
                 self.load_seconds, self.context_length)

    def _warm_up(self) -> None:
        """One token from a templated greeting: OpenVINO's first inference compiles kernels, which would otherwise
        land on the first user's TTFT. The prompt's blocks stay in the prefix cache, where real prompts share them.
        """
        import openvino_genai as ov_genai

        t0 = time.perf_counter()
        prompt = self._tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}],
                                                     add_generation_prompt=True)
        config = ov_genai.GenerationConfig(max_new_tokens=1, do_sample=False)
        config.apply_chat_template = False  # templated above
        if self.serial:
            self._pipe.generate(prompt, config)
        else:
            self._pipe.generate([prompt], [config])
        self._decode(self._close_ids)  # the detokenizer's first call is slow too
        log.info("LLM warm-up took %.2f s", time.perf_counter() - t0)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything in flight and stop the owner thread."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout)
            self._thread = None

    # --- the caller's side (any thread) ----------------------------------------------------------------

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """Apply the model's own chat template; earlier answers go in without their reasoning."""
        if self._tokenizer is None:
            raise NotReady("The LLM is not loaded yet.")
        history = [
            {"role": m["role"], "content": strip_reasoning(m["content"]) if m["role"] == "assistant"
             else m["content"]}
            for m in messages
        ]
        return str(self._tokenizer.apply_chat_template(history, add_generation_prompt=True))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the templated prompt for these messages."""
        return self.count_tokens(self.render_prompt(messages))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees it."""
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        encoded = self._tokenizer.encode(text, add_special_tokens=False)
        return [int(t) for t in encoded.input_ids.data.reshape(-1)]

    def submit(self, messages: list[dict[str, str]], params: GenParams,
               loop: asyncio.AbstractEventLoop) -> LLMStream:
        """Template, tokenize, check the context and queue a request; errors are raised here, before streaming.

        Results are delivered on ``loop``. Call it from a worker thread (tokenizing a long prompt takes a while).
        """
        return self.submit_prompt(self.render_prompt(messages), params, loop)

    def submit_prompt(self, prompt: str, params: GenParams, loop: asyncio.AbstractEventLoop) -> LLMStream:
        """Queue an already templated prompt."""
        if self._thread is None:
            raise NotReady("The LLM is not loaded.")
        if self.failure is not None:
            raise EngineFailure(f"The LLM engine stopped after an internal error ({self.failure}); restart the "
                                "server.")
        if constrains_whole_reply(params) and prompt.rstrip().endswith(THINK_OPEN):
            prompt += "</think>\n\n"  # constrained output has no room for reasoning: close the block empty
        ids = self._encode(prompt)
        max_new = self._max_new_tokens(len(ids), params.max_tokens)
        config = checked_generation_config(params, max_new)
        stream = LLMStream(loop, f"chatcmpl-{uuid.uuid4().hex[:24]}", len(ids))
        with self._pending_lock:
            if self._pending >= self.capacity:
                raise Busy(f"The LLM queue is full ({self.capacity} requests); retry shortly.", retry_after=2)
            self._pending += 1
        self._live.add(stream)
        budget = params.reasoning_budget if params.reasoning_budget is not None else self.settings.reasoning_budget
        opened = prompt.rstrip().endswith(THINK_OPEN)
        self._inbox.put(_Request(
            stream=stream, prompt_ids=ids, config=config, max_new_tokens=max_new,
            budget=budget if opened or budget > 0 else None, splitter=ReasoningSplitter(in_think=opened),
            timing=Timing(),
        ))
        admission.settle_current()  # after the put, so the owner always sees it either on its way or queued
        return stream

    def _max_new_tokens(self, prompt_tokens: int, asked: int | None) -> int:
        room = self.context_length - prompt_tokens
        if self.serial:
            room = min(room, self.settings.npu_max_prompt_len + self.settings.npu_min_response_len - prompt_tokens)
            if prompt_tokens > self.settings.npu_max_prompt_len:
                room = 0
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens; the messages take "
                f"{prompt_tokens}. Shorten them.", param="messages")
        if asked is None:
            return min(room, self.settings.max_tokens_limit)
        if asked > self.settings.max_tokens_limit:
            raise InvalidRequest(
                f"max_tokens is {asked}; this server allows at most {self.settings.max_tokens_limit}.",
                param="max_tokens")
        if asked > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{prompt_tokens + asked} tokens ({prompt_tokens} in the messages, {asked} in the completion).",
                param="max_tokens")
        return asked

    # --- the owner thread ----------

    def _run(self) -> None:
        try:
            if self.serial:
                self._run_serial()
            else:
                self._run_batched()
        except Exception as exc:  # never let the owner die silently: fail whatever is left, refuse what comes
            log.exception("LLM owner thread failed")
            self.failure = f"{type(exc).__name__}: {exc}"
            for stream in list(self._live):
                stream.put(EngineFailure("The LLM engine stopped after an internal error; restart the server."))
                stream.close()
            self._live.clear()

    def _finish(self, req: _Request, result: Done | BaseException) -> None:
        if req.timing.started is not None:
            self.active -= 1
        req.timing.finished = time.perf_counter()
        with self._pending_lock:
            self._pending -= 1
        self._live.discard(req.stream)
        req.stream.put(result)
        req.stream.close()
        if isinstance(result, Done):
            _log_timing(req.stream.request_id, result)
            for observe in self.observers:
                try:
                    observe(result)
                except Exception:
                    log.exception("an LLM observer failed")

    def _run_batched(self) -> None:
        waiting: deque[_Request] = deque()
        running: dict[int, _Request] = {}
        while not self._take_inbox(waiting, block=not running and not waiting):
            self._drop_cancelled(waiting, running)
            while waiting and len(running) < self.settings.max_num_seqs:
                self._start(waiting.popleft(), running, None)
            if running:
                self._step(running)
        for req in [*waiting, *running.values()]:
            if req.handle is not None:
                req.handle.cancel()
            self._finish(req, Cancelled("The server is shutting down."))
        self._release()

    def _release(self) -> None:
        """Let the scheduler free the KV blocks of cancelled requests (it does so on its next step)."""
        if self._pipe.has_non_finished_requests():
            try:
                self._pipe.step()
            except Exception:
                log.exception("releasing cancelled requests failed")

    def _step(self, running: dict[int, _Request]) -> None:
        """One pipeline step for every running request, then hand out what it produced."""
        started = time.perf_counter()
        try:
            self._pipe.step()
        except Exception as exc:
            log.exception("pipeline step failed")
            for req in running.values():
                self._finish(req, EngineFailure(f"Generation failed: {type(exc).__name__}"))
            running.clear()
            return
        outputs = {rid: self._read(req) for rid, req in running.items()}
        texts = self._detokenize([(rid, running[rid], out[0]) for rid, out in outputs.items() if out[0]])
        for rid, req in list(running.items()):
            new, finish, status = outputs[rid]
            if self._collect(req, running, rid, new, finish, status, texts.get(rid, "")):
                del running[rid]
        if time.perf_counter() - started >= HANDOFF_MIN_STEP_SECONDS:
            self._hand_off(running)

    def _detokenize(self, batch: list[tuple[int, _Request, list[int]]]) -> dict[int, str]:
        """The new text of each request's new tokens, decoded in one tokenizer call for all of them."""
        detoks: list[IncrementalDetokenizer] = []
        windows: list[list[int]] = []
        for _, req, ids in batch:
            assert req.detok is not None
            detoks.append(req.detok)
            windows.extend(req.detok.extend(ids))
        texts = self._decode_many(windows)
        return {rid: detok.take(texts[2 * i], texts[2 * i + 1])
                for i, ((rid, _, _), detok) in enumerate(zip(batch, detoks, strict=True))}

    def _decode_many(self, windows: list[list[int]]) -> list[str]:
        if self._table_decode is not None:
            return [self._table_decode(w) for w in windows]
        return self._decode_with_openvino(windows)

    def _decode_with_openvino(self, windows: list[list[int]]) -> list[str]:
        texts = [""] * len(windows)
        full = [i for i, w in enumerate(windows) if w]
        if full:
            for i, text in zip(full, self._tokenizer.decode([windows[i] for i in full]), strict=True):
                texts[i] = str(text)
        return texts

    @staticmethod
    def _hand_off(running: dict[int, _Request]) -> None:
        """Let the event loop send this step's tokens to clients waiting for them before the next step starts.

        ``ContinuousBatchingPipeline.step()`` holds the GIL for the whole step (openvino-genai 2026.4), so without
        this a token reaches its client one step after it exists: a whole decode step added to TTFT and ITL. Only
        worth it when steps are long: with millisecond steps (tiny models) the event loop gets its turns between
        steps anyway and sends several tokens per chunk.
        """
        owed = [req.stream for req in running.values() if req.stream.owes_handoff]
        if owed:
            deadline = time.perf_counter() + HANDOFF_SECONDS
            for stream in owed:
                stream.wait_handed_off(deadline)

    def _take_inbox(self, waiting: deque[_Request], *, block: bool) -> bool:
        """Move new requests into ``waiting``; True when asked to stop.

        Woken from idle, it waits, for at most ``batch_window_ms``, while other requests are still on their way
        (being read, validated or tokenized): requests sent together (a desktop app's parallel calls, a benchmark's
        streams) then prefill in one step instead of each waiting out the other's prefill, and a lone request does
        not wait at all.
        """
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return False
        deadline = time.perf_counter() + (self.settings.batch_window_ms / 1000 if block else 0.0)
        while item is not None:
            waiting.append(item)
            nxt = self._next_arrival(deadline)
            if nxt is False:
                return False
            item = nxt
        return True

    def _next_arrival(self, deadline: float) -> _Request | None | Literal[False]:
        """The next queued request, waiting for one until ``deadline`` only while others are on their way."""
        while True:
            try:
                return self._inbox.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self.arrivals.count <= 0:
                return False
            try:  # in short waits: a request on its way may end without submitting (a 4xx)
                return self._inbox.get(timeout=min(remaining, ARRIVAL_POLL_SECONDS))
            except queue.Empty:
                continue

    def _drop_cancelled(self, waiting: deque[_Request], running: dict[int, _Request]) -> None:
        for req in [r for r in waiting if r.stream.cancelled]:
            waiting.remove(req)
            self._finish(req, Cancelled("The request was cancelled."))
        for rid, req in list(running.items()):
            if req.stream.cancelled:
                req.handle.cancel()
                del running[rid]
                self._finish(req, Cancelled("The request was cancelled."))
                if not running:
                    self._release()

    def _start(self, req: _Request, running: dict[int, _Request], ids: list[int] | None,
               max_new: int | None = None) -> None:
        import openvino as ov

        if max_new is not None:
            req.config.max_new_tokens = max_new
        rid = next(self._ids)
        try:
            req.handle = self._pipe.add_request(rid, ov.Tensor(_as_array(req.prompt_ids if ids is None else ids)),
                                                req.config)
        except Exception as exc:  # one request the pipeline refuses must not stop the owner thread
            log.exception("the pipeline refused a request")
            self._finish(req, EngineFailure(f"Generation failed: {type(exc).__name__}"))
            return
        if req.timing.started is None:
            req.timing.started = time.perf_counter()
            self.active += 1
            req.detok = IncrementalDetokenizer(self._decode, req.prompt_ids)
        running[rid] = req

    @staticmethod
    def _read(req: _Request) -> tuple[list[int], Any, Any]:
        """What a step produced for one request: new token ids, finish reason (or None), status."""
        import openvino_genai as ov_genai

        new: list[int] = []
        finish = None
        while req.handle.can_read():
            for out in req.handle.read().values():
                new.extend(out.generated_ids)
                if out.finish_reason != ov_genai.GenerationFinishReason.NONE:
                    finish = out.finish_reason
        return new, finish, req.handle.get_status()

    def _collect(self, req: _Request, running: dict[int, _Request], rid: int, new: list[int], finish: Any,
                 status: Any, text: str) -> bool:
        """Hand out what a step produced for one request; True when the request is finished."""
        import openvino_genai as ov_genai

        if new:
            self._emit(req, new, text)
        done = finish is not None or status not in (ov_genai.GenerationStatus.RUNNING,)
        if not done and req.budget is not None and req.splitter.in_think and req.think_tokens >= req.budget:
            return self._force_answer(req, running, rid)
        if not done:
            return False
        if self._ended_inside_think(req, finish):
            return self._force_answer(req, running, rid)
        if status == ov_genai.GenerationStatus.IGNORED:
            self._finish(req, EngineFailure("The request did not fit the KV cache; lower the prompt or retry."))
            return True
        length = finish == ov_genai.GenerationFinishReason.LENGTH and not req.config.ignore_eos or (
            req.config.ignore_eos and len(req.generated) + req.forced_tokens >= req.max_new_tokens)
        self._flush(req)
        self._finish(req, Done("length" if length else "stop", len(req.prompt_ids),
                               len(req.generated) + req.forced_tokens, req.timing))
        return True

    def _ended_inside_think(self, req: _Request, finish: Any) -> bool:
        """The model stopped (EOS) before closing its think block: it owes an answer."""
        import openvino_genai as ov_genai

        return (finish == ov_genai.GenerationFinishReason.STOP and req.splitter.in_think and not req.forced
                and bool(req.generated) and req.generated[-1] == self._eos_id and not req.config.ignore_eos)

    def _emit(self, req: _Request, ids: list[int], text: str) -> None:
        if req.timing.first_token is None:
            req.timing.first_token = time.perf_counter()
        req.generated.extend(ids)
        thinking = req.splitter.in_think
        if text:
            req.text_out.append(text)
        if thinking:
            req.think_tokens += len(ids)
        self._push_text(req, len(ids))

    def _decode(self, ids: list[int]) -> str:
        return self._decode_many([ids])[0]

    @staticmethod
    def _write(req: _Request, ids: list[int]) -> None:
        assert req.detok is not None
        text = req.detok.push(ids)
        if text:
            req.text_out.append(text)

    def _push_text(self, req: _Request, tokens: int) -> None:
        text = "".join(req.text_out)
        req.text_out.clear()
        reasoning, content = req.splitter.feed(text) if text else ("", "")
        req.unsent_tokens += tokens
        if reasoning or content:  # tokens whose text is held back (partial words, tags) ride with the next text
            req.stream.put(Delta(reasoning, content, req.unsent_tokens))
            req.unsent_tokens = 0

    def _flush(self, req: _Request) -> None:
        self._push_text(req, 0)
        reasoning, content = req.splitter.finish()
        if reasoning or content:
            req.stream.put(Delta(reasoning, content, 0))

    def _force_answer(self, req: _Request, running: dict[int, _Request], rid: int) -> bool:
        """The reasoning budget is spent (or the model ended inside it): close the think block, then answer."""
        req.handle.cancel()
        del running[rid]
        req.forced = True
        if req.generated and req.generated[-1] == self._eos_id:
            req.generated.pop()  # the continuation must not hold an end-of-sequence token
        req.forced_tokens += len(self._close_ids)
        self._write(req, self._close_ids)
        self._push_text(req, len(self._close_ids))
        remaining = req.max_new_tokens - len(req.generated) - req.forced_tokens
        log.info("%s: closing the think block after %d tokens; answering", req.stream.request_id, req.think_tokens)
        req.budget = None
        if remaining <= 0:
            self._flush(req)
            self._finish(req, Done("length", len(req.prompt_ids), len(req.generated) + req.forced_tokens,
                                   req.timing))
            return False
        self._start(req, running, req.prompt_ids + req.generated + self._close_ids, max_new=remaining)
        return False

    def _run_serial(self) -> None:
        """NPU: one request at a time through LLMPipeline.generate with a cancelling streamer."""
        while (req := self._inbox.get()) is not None:
            if req.stream.cancelled:
                self._finish(req, Cancelled("The request was cancelled."))
            else:
                self._serve_one(req)
        while True:  # drain what is left after the stop signal
            try:
                left = self._inbox.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                self._finish(left, Cancelled("The server is shutting down."))

    def _serve_one(self, req: _Request) -> None:
        import openvino as ov
        import openvino_genai as ov_genai

        req.timing.started = time.perf_counter()
        self.active += 1

        def on_text(text: str) -> Any:
            if req.timing.first_token is None:
                req.timing.first_token = time.perf_counter()
            req.text_out.append(text)
            self._push_text(req, 1)
            return ov_genai.StreamingStatus.CANCEL if req.stream.cancelled else ov_genai.StreamingStatus.RUNNING

        try:
            res = self._pipe.generate(ov.Tensor(_as_array(req.prompt_ids)), req.config, on_text)
            n = int(res.perf_metrics.get_num_generated_tokens())
        except Exception as exc:
            log.exception("generation failed")
            self._finish(req, EngineFailure(f"Generation failed: {type(exc).__name__}"))
            return
        if req.stream.cancelled:
            self._finish(req, Cancelled("The request was cancelled."))
            return
        reasoning, content = req.splitter.finish()
        if reasoning or content:
            req.stream.put(Delta(reasoning, content, 0))
        self._finish(req, Done("length" if n >= req.max_new_tokens else "stop", len(req.prompt_ids), n,
                               req.timing))


def _as_array(ids: list[int]) -> Any:
    import numpy as np

    return np.asarray([ids], dtype=np.int64)


def _log_timing(request_id: str, done: Done) -> None:
    t = done.timing
    if t.started is None or t.finished is None:
        return
    decode = (t.finished - t.first_token) if t.first_token else 0.0
    rate = (done.completion_tokens - 1) / decode if decode > 0 and done.completion_tokens > 1 else 0.0
    log.info("%s: queue %.1f ms, ttft %.1f ms, %d+%d tokens, %.1f tokens/s, %s", request_id,
             (t.started - t.queued) * 1e3, (t.ttft or 0.0) * 1e3, done.prompt_tokens, done.completion_tokens,
             rate, done.finish_reason)
