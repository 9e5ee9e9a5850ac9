"""The in-process LLM engine over openvino-genai: loads the model, templates and validates requests, queues them.

On CPU and GPU its owner loop (``llm_loop.BatchLoop``) drives a ``ContinuousBatchingPipeline``, so several requests
make progress together; on NPU (``SerialLoop``) an ``LLMPipeline`` compiled for static shapes serves one request at
a time. Pipelines come from a factory, so a broken one can be rebuilt (and tests can inject faults). A request is
checked whole before it is queued, its structured-output constraint compiled on a probe (``grammar``): what the
pipeline would refuse is a 400 here, never a failure inside the shared batch.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aipc_chat.engines.admission import Arrival, Arrivals
from aipc_chat.engines.bytelevel import ByteLevelDecoder
from aipc_chat.engines.contract import (
    JSON_OBJECT,
    RETRY_AFTER_SECONDS,
    Done,
    EngineHealth,
    GenParams,
    LLMStream,
    ToolSet,
    constrains_whole_reply,
)
from aipc_chat.engines.grammar import ConstraintChecker, json_object_grammar
from aipc_chat.engines.llm_loop import AnswerStop, BatchLoop, LoopRequest, OwnerLoop, SerialLoop, Vocabulary, capacity
from aipc_chat.engines.scheduler import ModelSpec, Scheduler, health_of, weights_mb
from aipc_chat.engines.tools import (
    AnswerStops,
    RepeatedCallStop,
    plain_history,
    structural_tags,
    tool_constraint,
    tool_dicts,
    with_tool_prompt,
    writes_tool_calls,
)
from aipc_chat.errors import ContextLengthExceeded, InvalidRequest, MemoryFull, ModelSetupError, NotReady
from aipc_chat.reasoning import THINK_CLOSE, THINK_OPEN, ReasoningSplitter, StopMatcher, strip_reasoning
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

MAX_CONTEXT_DEFAULT = 32768
THINK_CLOSE_TEXT = "\n</think>\n\n"
MIN_SAMPLING_TEMPERATURE = 1e-5  # below this, sampling is argmax in effect (and 1e-50 is 0 in float32): greedy
PipelineFactory = Callable[[], Any]  # builds a fresh pipeline (ContinuousBatchingPipeline, or LLMPipeline on NPU)


KV_BLOCK_TOKENS = {"CPU": 32}  # tokens per KV-cache block on each device (openvino-genai); 16 elsewhere
KV_BYTES_PER_VALUE = 4  # at most f32 per cached value (CPU keeps u8 for most models, more for tiny heads)


def kv_bytes_per_token(config: dict[str, Any] | None) -> int | None:
    """KV-cache bytes one token takes at most (keys and values of every layer), from config.json; None if unknown."""
    if config is None:
        return None
    try:
        layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * KV_BYTES_PER_VALUE


def kv_cap_tokens(settings: Settings, context_length: int | None, kv_bytes: int | None) -> int | None:
    """Tokens the KV cache is capped at when every sequence at full context needs less than ``AIPC_KV_CACHE_GB``
    (small models); None when that limit is the cap (or the model's shape is unknown)."""
    if not context_length or not kv_bytes:
        return None
    tokens = settings.max_num_seqs * context_length
    return tokens if tokens * kv_bytes < settings.kv_cache_gb * 2**30 else None


def scheduler_config(settings: Settings, context_length: int | None = None, kv_bytes: int | None = None,
                     device: str = "CPU") -> Any:
    """The continuous-batching scheduler configuration for these settings.

    The KV cache grows as requests need blocks and keeps what it grew (as the prefix cache) up to its limit,
    ``AIPC_KV_CACHE_GB``. When every sequence at full context needs less than that (small models), the limit is
    that need instead, in blocks: otherwise a small model's RSS would rise for millions of tokens before levelling.
    """
    import openvino_genai as ov_genai

    cfg = ov_genai.SchedulerConfig()
    cfg.cache_size = settings.kv_cache_gb
    tokens = kv_cap_tokens(settings, context_length, kv_bytes)
    if tokens is not None:
        cfg.cache_size = 0
        cfg.num_kv_blocks = -(-tokens // KV_BLOCK_TOKENS.get(device.split(".")[0], 16))
    cfg.max_num_seqs = settings.max_num_seqs
    cfg.enable_prefix_caching = settings.prefix_caching
    cfg.dynamic_split_fuse = True
    return cfg


CPU_RUNTIME_CACHE_SHAPES = 16  # input shapes whose executors the CPU plugin keeps per compiled LLM (default 5000)


def device_properties(settings: Settings, device: str) -> dict[str, Any]:
    """OpenVINO properties for compiling the LLM on ``device`` (compile cache, NPU static shapes, and on CPU a
    bounded cache of per-shape executors: see ``aipc_chat/engines/__init__.py``)."""
    props: dict[str, Any] = {"CACHE_DIR": str(settings.compile_cache_dir / "llm")}
    if device == "CPU":
        props["CPU_RUNTIME_CACHE_CAPACITY"] = CPU_RUNTIME_CACHE_SHAPES
    if device == "NPU":
        props.update(
            MAX_PROMPT_LEN=settings.npu_max_prompt_len,
            MIN_RESPONSE_LEN=settings.npu_min_response_len,
            GENERATE_HINT="BEST_PERF",
        )
    return props


def generation_config(params: GenParams, max_new_tokens: int, *, stop_in_pipeline: bool = True) -> Any:
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
    if params.stop and stop_in_pipeline:
        cfg.stop_strings = set(params.stop)
    cfg.presence_penalty = params.presence_penalty
    cfg.frequency_penalty = params.frequency_penalty
    cfg.repetition_penalty = params.repetition_penalty
    structured = structured_output_config(params)
    if structured is not None:
        cfg.structured_output_config = structured
    return cfg


def checked_generation_config(params: GenParams, max_new_tokens: int, *, stop_in_pipeline: bool = True) -> Any:
    """``generation_config``, validated by openvino-genai itself: what it would refuse is a 400 here, not a failure
    on the owner thread (values Python accepts can still round to 0 in the pipeline's float32, e.g. 1e-100)."""
    config = generation_config(params, max_new_tokens, stop_in_pipeline=stop_in_pipeline)
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


def structured_output_config(params: GenParams) -> Any | None:
    """The structured-output constraint a request asks for, if any."""
    if not constrains_whole_reply(params) and params.tag is None and params.tool_constraint is None:
        return None
    import openvino_genai as ov_genai

    so = ov_genai.StructuredOutputConfig()
    if params.tool_constraint is not None:
        so.structural_tags_config = structural_tags(params.tool_constraint)
    elif params.tag is not None:
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


def think_tags(chat_template: str, think_ids: list[int]) -> bool:
    """Whether a model reasons in ``<think>`` blocks: its chat template names the tags, or ``<think>`` is one token
    of its vocabulary. Other models' replies are all answer (no ``reasoning_content``)."""
    return THINK_OPEN in chat_template or THINK_CLOSE in chat_template or len(think_ids) == 1


def _model_config(model_dir: Path) -> dict[str, Any] | None:
    """The model's config.json (for a GGUF file, the same keys from its metadata), or None when unreadable."""
    if model_dir.suffix.lower() == ".gguf":
        from aipc_chat.provision.gguf import read_gguf

        try:
            return read_gguf(model_dir).config
        except ModelSetupError:
            return None
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


def kv_cache_bound_mb(settings: Settings, context_length: int, config: dict[str, Any] | None, device: str) -> float:
    """The most the KV cache grows to once the model is loaded (as ``scheduler_config`` bounds it); 0 on NPU."""
    if device == "NPU":
        return 0.0
    kv_bytes = kv_bytes_per_token(config)
    tokens = kv_cap_tokens(settings, context_length, kv_bytes)
    if tokens is None or not kv_bytes:
        return float(settings.kv_cache_gb * 1024)
    return round(tokens * kv_bytes / 2**20, 1)


class OpenVINOPipelines:
    """The default pipeline factory: the model compiled for its device, through the compile cache."""

    def __init__(self, settings: Settings, model_dir: Path, device: str) -> None:
        self.settings, self.model_dir, self.device = settings, model_dir, device
        config = _model_config(model_dir)
        self.scheduler = None if device == "NPU" else scheduler_config(
            settings, _context_length(config, settings.context_length), kv_bytes_per_token(config), device)

    def __call__(self) -> Any:
        import openvino_genai as ov_genai

        props = device_properties(self.settings, self.device)
        if self.device == "NPU":
            return ov_genai.LLMPipeline(str(self.model_dir), self.device, **props)
        return ov_genai.ContinuousBatchingPipeline(str(self.model_dir), self.scheduler, self.device, props)


class LLMEngine:
    """Serves chat requests from one openvino-genai pipeline, through an owner loop on its own thread.

    The model scheduler loads and unloads the pipeline (``_load_pipeline`` / ``_unload_pipeline`` run on its thread);
    each request holds the model from ``submit`` until it finishes.
    """

    name = "llm"

    def __init__(self, settings: Settings, model_dir: Path, model_name: str, device: str, *,
                 pipelines: PipelineFactory | None = None, arrivals: Arrivals | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.model_name = model_name
        self.device = device
        self._config = _model_config(model_dir)
        self.context_length = _context_length(self._config, settings.context_length)
        self.reasons = True  # known at load: whether the template or vocabulary has think tags
        self.observers: list[Callable[[Done], None]] = []  # called on the owner thread for each finished request
        self.arrivals = arrivals if arrivals is not None else Arrivals()
        self.constraints = ConstraintChecker()
        self._pipelines = pipelines if pipelines is not None else OpenVINOPipelines(settings, model_dir, device)
        self._tokenizer: Any = None
        self._table_decode: ByteLevelDecoder | None = None  # byte-level BPE: decode by table lookup
        self._loop: OwnerLoop | None = None
        self._vocab: Vocabulary | None = None
        self._pipe: Any = None  # the loaded pipeline (the scheduler's handle), kept for the owner loop's start
        self._pipe_lock = threading.Lock()  # the scheduler's thread installs it while the owner loop is created
        if scheduler is None:
            scheduler = Scheduler(max_waiting=capacity(settings))
            scheduler.start()
        self.scheduler = scheduler
        keep = settings.keep_alive_seconds
        scheduler.add(ModelSpec(
            self.name, self._load_pipeline, self._unload_pipeline, weights_mb(model_dir),
            kv_cache_bound_mb(settings, self.context_length, self._config, device),
            math.inf if keep is None else keep))

    @property
    def serial(self) -> bool:
        """True on NPU: one request at a time through LLMPipeline."""
        return self.device == "NPU"

    @property
    def active(self) -> int:
        """Requests generating now."""
        return self._loop.active if self._loop is not None else 0

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet generating."""
        return self._loop.waiting if self._loop is not None else 0

    def health(self) -> EngineHealth:
        """The engine's state, as the scheduler's record of its model says (the owner loop must be running)."""
        if self._loop is None:
            return EngineHealth("loading", retry_after=RETRY_AFTER_SECONDS)
        view = self.scheduler.view(self.name)
        if not view.broken and self._loop.stopped:
            return EngineHealth("failed", self._loop.error or "the owner loop is not running", view.restarts)
        return health_of(view)

    def check_serving(self) -> None:
        """Raise NotReady unless new requests can be taken now."""
        if self._loop is None:
            raise NotReady("The LLM is not loaded.", retry_after=RETRY_AFTER_SECONDS)
        self.scheduler.check(self.name)
        if self._loop.stopped:
            raise NotReady(f"The LLM engine has failed ({self._loop.error}); restart the server.")

    def load(self, preload: bool | None = None) -> None:
        """Ready the engine (blocking) and start its owner loop; with ``preload`` (default: ``load_on_start``) the
        scheduler loads the pipeline first, whose tokenizer then serves, unless the memory budget has no room (then
        only the tokenizer is loaded, and the first request loads the pipeline)."""
        import openvino_genai as ov_genai  # before the measured load: the library is not the model's cost

        t0 = time.perf_counter()
        if self.settings.load_on_start if preload is None else preload:
            try:
                self.scheduler.preload(self.name)
            except MemoryFull as exc:
                log.warning("the LLM loads on its first request: %s", exc.message)
        if self._tokenizer is None:
            self._use_tokenizer(ov_genai.Tokenizer(str(self.model_dir)))
        self.constraints.load()
        assert self._vocab is not None
        loop_type = SerialLoop if self.serial else BatchLoop
        loop = loop_type(self.settings, self._vocab, arrivals=self.arrivals, observers=self.observers,
                         recover=lambda cause: self.scheduler.recover(self.name, cause), release=self.scheduler.release)
        with self._pipe_lock:
            self._loop, loop.pipe = loop, self._pipe
        loop.start()
        log.info("LLM %s %s on %s in %.2f s (context %d)", self.model_name,
                 "loaded" if self._pipe is not None else "ready to load", self.device, time.perf_counter() - t0,
                 self.context_length)

    def _use_tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.reasons = think_tags(str(tokenizer.chat_template or ""), self.encode(THINK_OPEN))
        self._table_decode = ByteLevelDecoder.load(self.model_dir, self._decode_with_openvino,
                                                   (self._config or {}).get("vocab_size"))
        log.info("LLM detokenizing with %s", "a byte-level table" if self._table_decode else "openvino-tokenizers")
        self._vocab = Vocabulary(self._decode_many, self.encode(THINK_CLOSE_TEXT),
                                 int(tokenizer.get_eos_token_id()))

    def _load_pipeline(self) -> Any:
        """Build, warm up and install a pipeline (the scheduler's thread: a load, or a rebuild after a failure)."""
        pipe = self._pipelines()
        if self._tokenizer is None:
            self._use_tokenizer(pipe.get_tokenizer())
        if self.settings.llm_warmup:
            self._warm_up(pipe)
        with self._pipe_lock:
            self._pipe = pipe
            if self._loop is not None:
                self._loop.pipe = pipe
        return pipe

    def _unload_pipeline(self, pipe: Any) -> None:
        """Take the pipeline out (the scheduler's thread; no request holds the model)."""
        with self._pipe_lock:
            self._pipe = None
            if self._loop is not None:
                self._loop.pipe = None

    def _warm_up(self, pipe: Any) -> None:
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
            pipe.generate(prompt, config)
        else:
            pipe.generate([prompt], [config])
        self.decode(self.encode(THINK_CLOSE_TEXT))  # the detokenizer's first call is slow too
        log.info("LLM warm-up took %.2f s", time.perf_counter() - t0)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything in flight and stop the owner loop."""
        if self._loop is not None:
            self._loop.stop(timeout)
        self.constraints.close()

    def cancel_all(self) -> None:
        """Cancel every request in flight (the owner drops them at its next step)."""
        if self._loop is not None:
            self._loop.cancel_all()

    # --- the caller's side (any thread) ----------------------------------------------------------------

    @property
    def chat_template(self) -> str:
        """The model's chat template."""
        return str(self._tokenizer.chat_template or "") if self._tokenizer is not None else ""

    def preload(self, keep_alive: float | None = None, *, timeout: float | None = None) -> None:
        """Load the model without generating (Ollama's request with no prompt); blocking."""
        self.check_serving()
        self.scheduler.preload(self.name, keep_alive, timeout=timeout)

    def release(self, wait: bool = True, *, if_idle: bool = False) -> None:
        """Unload the model as soon as no request holds it (``if_idle``: only if none does now); with ``wait``,
        block until it is unloaded."""
        self.scheduler.unload(self.name, wait=wait, timeout=self.settings.request_timeout, if_idle=if_idle)

    def render_prompt(self, messages: list[dict[str, Any]], tools: ToolSet | None = None) -> str:
        """Apply the model's own chat template; earlier answers go in without their reasoning, earlier tool calls
        and results as text (``engines/tools.py``), and the tools where the template takes them or else in the
        generic tool prompt."""
        if self._tokenizer is None:
            raise NotReady("The LLM is not loaded yet.", retry_after=RETRY_AFTER_SECONDS)
        history = [
            {"role": m["role"], "content": strip_reasoning(m["content"]) if m["role"] == "assistant"
             else m["content"]}
            for m in plain_history(messages)
        ]
        if tools is not None and writes_tool_calls(self.chat_template):
            return str(self._tokenizer.apply_chat_template(history, add_generation_prompt=True,
                                                           tools=tool_dicts(tools)))
        if tools is not None:
            history = with_tool_prompt(history, tools)
        return str(self._tokenizer.apply_chat_template(history, add_generation_prompt=True))

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of the templated prompt for these messages."""
        return len(self.encode(self.render_prompt(messages)))

    def decode(self, ids: list[int]) -> str:
        """Text of token ids, as the engine decodes them while streaming."""
        return self._decode_many([ids])[0]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        encoded = self._tokenizer.encode(text, add_special_tokens=False)
        return [int(t) for t in encoded.input_ids.data.reshape(-1)]

    def submit(self, messages: list[dict[str, Any]], params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        """Template, tokenize, check and queue a request; errors are raised here, before streaming.

        Blocking (tokenizing a long prompt takes a while; a model that is not loaded is loaded first): call it from
        a worker thread. ``arrival`` is settled once the request is queued or refused.
        """
        try:
            return self._queue(self.render_prompt(messages, params.tools), params)
        finally:
            if arrival is not None:  # after the queueing: the owner sees the request either on its way or queued
                arrival.settle()

    def submit_prompt(self, prompt: str, params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        """Queue a prompt as it is (no chat template), as ``submit`` does."""
        try:
            return self._queue(prompt, params)
        finally:
            if arrival is not None:
                arrival.settle()

    def _queue(self, prompt: str, params: GenParams) -> LLMStream:
        self.check_serving()
        assert self._loop is not None
        if (constrains_whole_reply(params) or not params.think) and prompt.rstrip().endswith(THINK_OPEN):
            prompt += "</think>\n\n"  # no reasoning wanted (or no room for it): close the block empty
        ids = self.encode(prompt)
        max_new = self._max_new_tokens(len(ids), params.max_tokens)
        tags = self.reasons and params.split_reasoning
        # A reasoning model's stop strings are matched on its answer here: the pipeline would match its reasoning too
        if params.json_schema == JSON_OBJECT:  # JSON mode: an object that always closes within max_new tokens
            params = replace(params, json_schema=None, grammar=json_object_grammar(max_new))
        opened = tags and prompt.rstrip().endswith(THINK_OPEN)
        budget = params.reasoning_budget if params.reasoning_budget is not None else self.settings.reasoning_budget
        answer_config = None
        if params.tools is not None:  # the calls' grammar: bounded to what is left after the reasoning, if any
            think_first = opened  # the grammar leaves the think block free (a call there would be lost)
            calls = tool_constraint(params.tools, max_new // 2 if think_first else max_new, think_first=think_first)
            params = replace(params, tool_constraint=calls, constraint_param="tools")
            if think_first:  # reasoning leaves room for the call; once the engine closes it, only the call is left
                close = len(self._vocab.close_ids) if self._vocab is not None else 0
                budget = min(budget, max(0, max_new - max(max_new // 2, calls.tokens) - close))
                answer_config = checked_generation_config(
                    replace(params, tool_constraint=replace(calls, think_first=False)), max_new,
                    stop_in_pipeline=not tags)
        config = checked_generation_config(params, max_new, stop_in_pipeline=not tags)
        structured = structured_output_config(params)
        if structured is not None:  # compiled on the probe: a constraint that does not compile never enters the batch
            self.constraints.check(params, structured)
        stream = LLMStream(f"chatcmpl-{uuid.uuid4().hex[:24]}", len(ids))
        lease = self.scheduler.acquire(self.name, timeout=self.settings.request_timeout)  # loads it if need be
        try:
            self._loop.admit(LoopRequest(
                stream=stream, prompt_ids=ids, config=config, max_new_tokens=max_new,
                budget=budget if tags and (opened or budget > 0) else None,
                splitter=ReasoningSplitter(in_think=opened, tags=tags), keep_alive=params.keep_alive,
                stopper=self._stopper(params, tags), lease=lease,
                answer_config=answer_config,
            ))
        except BaseException:
            self.scheduler.release(lease)
            raise
        return stream

    @staticmethod
    def _stopper(params: GenParams, tags: bool) -> AnswerStop | None:
        """What ends the answer early in the engine: a reasoning model's stop strings (the pipeline would match
        its reasoning too) and a repeated tool call."""
        stops: list[StopMatcher | RepeatedCallStop] = [StopMatcher(params.stop)] if tags and params.stop else []
        if params.tools is not None and params.tools.parallel:
            stops.append(RepeatedCallStop())
        return AnswerStops(*stops) if len(stops) > 1 else stops[0] if stops else None

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
