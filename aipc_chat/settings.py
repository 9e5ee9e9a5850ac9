"""The one configuration object: every knob, its environment names and its description.

Each field reads ``AIPC_<NAME>``; the seed project's names (``USE_MOCKS``, ``MODELS_CACHE_DIR``, ``DEEPSEEK_*``,
``STABLE_DIFFUSION_*``, ...) are accepted as aliases so old deployments keep working. Nothing reads settings at
import time: build one ``Settings`` and pass it down.

This module also owns what a person types into those settings: the size and duration forms (``8G``, ``5min``,
``1h30m``), the one-line explanation of a refused value, and the warning for an ``AIPC_`` name that is no setting.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVICE_PATTERN = re.compile(r"^(CPU|GPU(\.\d+)?|NPU|AUTO(:[A-Z0-9.,]+)?)$")
DEFAULT_LLM_REPO = "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-ov"
DEFAULT_IMAGE_REPO = "OpenVINO/stable-diffusion-v1-5-int8-ov"
NONE = "none"  # AIPC_LLM_REPO / AIPC_IMAGE_REPO: serve no model of that kind
SHIPPED_DEMO_DIR = Path(__file__).resolve().parent / "demo"  # the demo models, shipped built with the package
LLM_PATH_FORMS = ("an OpenVINO IR folder (with openvino_model.xml and its tokenizer), a .gguf file, or "
                  "ollama:NAME[:TAG]")
LOG_LEVELS = ("debug", "info", "warning", "error")
# AIPC_ names read by something other than the server (the test suite): not settings, and not misspellings of one
NOT_SETTINGS_PREFIXES = ("AIPC_TEST_",)


def user_folder() -> Path:
    """Where an installed aipc-chat keeps its models and data unless told otherwise: the platform's per-user data
    folder (``%LOCALAPPDATA%\\aipc-chat`` on Windows, ``~/.local/share/aipc-chat`` on Linux, ``~/Library/Application
    Support/aipc-chat`` on macOS), never the working directory."""
    import platformdirs

    return Path(platformdirs.user_data_dir("aipc-chat", appauthor=False))


def source_checkout(folder: Path) -> Path | None:
    """``folder`` when it is the root of an aipc-chat source checkout, else None.

    A checkout root holds ``models/.gitkeep`` and a ``pyproject.toml`` naming the project: an installed package
    (site-packages) and any other working folder have neither, so an installed aipc-chat never takes a checkout's
    folders unless it is started from one, where `make` would take them too.
    """
    try:
        if not (folder / "models" / ".gitkeep").is_file():
            return None
        pyproject = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    named = re.search(r'^\s*name\s*=\s*["\']aipc[-_]chat["\']', pyproject, re.MULTILINE)
    return folder.resolve() if named else None


# --- what people type: durations and sizes ----------

DURATION_FORMS = ("seconds (300), a number and a unit (500ms, 30s, 5m, 5min, 2h, 1d) or several (1h30m, 1h2m3s, "
                  "as Go and Ollama write them)")
FOREVER_FORMS = "; -1 (or any negative value) means forever"
SIZE_UNIT_FORMS = ("a number and a unit: 512MB, 8GB (decimal, 8*10^9 bytes), 8GiB, 8Gi or 8G (binary, 8*2^30 "
                   "bytes), 1.5g")
SIZE_FORMS = f"bytes (1048576) or {SIZE_UNIT_FORMS}"
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
            **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
            **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
            **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
            **dict.fromkeys(("d", "day", "days"), 86400.0)}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*([a-zµμ]+)")
_DURATION = re.compile(rf"(?:{_NUMBER}\s*[a-zµμ]+\s*)+")
# Bare letters are binary, as Docker, the JVM and systemd read them (``8G`` = 8 GiB); ``GB`` is decimal.
SIZE_UNITS = {"": 1, "b": 1,
              "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              **{f"{p}{s}": 2 ** (10 * (i + 1)) for i, p in enumerate("kmgt") for s in ("", "i", "ib")}}
_DECIMAL_UNITS = frozenset({"b", "kb", "mb", "gb", "tb"})
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([a-z]*)\s*", re.IGNORECASE)


KEEP_FOREVER_SECONDS = 100 * 365 * 86400.0  # a keep-alive this long or longer is forever (no timer, no date)


def parse_duration(text: str) -> float | None:
    """Seconds in a duration: ``300`` (seconds), ``500ms``, ``30s``, ``5m``, ``5min``, ``2h``, ``1d``, ``1h30m``
    (Go's and Ollama's form); a negative one (``-1``, ``-5m``) means forever and is None."""
    body = text.strip().lower()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body[1:].strip() if body[:1] in ("-", "+") else body
    try:
        seconds = float(body) if body[:1] not in ("-", "+") else math.nan  # one sign at most
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or math.isinf(seconds):
        if not _DURATION.fullmatch(body):
            raise ValueError(f"{text.strip()!r} is not a duration")
        parts = _DURATION_PART.findall(body)
        unknown = [unit for _, unit in parts if unit not in _SECONDS]
        if unknown:
            raise ValueError(f"{text.strip()!r} is not a duration (unknown unit {unknown[0]!r})")
        seconds = sum(float(number) * _SECONDS[unit] for number, unit in parts)
    if sign < 0:
        return None if seconds > 0 else 0.0
    return seconds


def parse_bytes(text: str) -> int:
    """Bytes in a size: plain bytes, ``512MB``, ``8GB`` (8*10^9), ``8GiB`` / ``8Gi`` / ``8G`` (8*2^30), ``1.5g``."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise ValueError(f"{text.strip()!r} is not a size")
    return round(float(match.group(1)) * int(SIZE_UNITS[unit]))


def _in_units(value: Any, decimal: int, binary: int) -> Any:
    """A value for a field counted in MB or GB: a plain number is already in the field's unit; a size is converted
    (``GB`` decimal, ``GiB`` / ``G`` binary), so ``2GB`` and ``2GiB`` are both 2 in a GB field."""
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or not match.group(2):
        return value  # a plain number, or no size at all: the field's own type takes or refuses it
    return _bytes(value) / (decimal if match.group(2).lower() in _DECIMAL_UNITS else binary)


def _env(name: str, *seed_names: str) -> AliasChoices:
    """Accept the field name, ``AIPC_<NAME>`` and the seed project's environment names."""
    return AliasChoices(name, f"AIPC_{name.upper()}", *seed_names)


def _seconds(value: Any, *, forever: bool = False) -> Any:
    """A duration setting's text as seconds (numbers pass through to the field's own bounds)."""
    if not isinstance(value, str):
        return value
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"not a duration; use {DURATION_FORMS}{FOREVER_FORMS if forever else ''}") from None
    if seconds is None and not forever:
        raise ValueError(f"a negative duration means forever, which this setting does not take; use "
                         f"{DURATION_FORMS}")
    return seconds


def _checked_size(value: Any, unit: str) -> Any:
    """A size refused with the forms a size takes (a plain number is left to the field's own type)."""
    if isinstance(value, str) and _SIZE.fullmatch(value) is None and not value.strip().lstrip("-").isdigit():
        raise ValueError(f"not a size; use a number of {unit} or {SIZE_UNIT_FORMS}")
    return value


def _bytes(value: Any) -> Any:
    """A size setting's text as bytes."""
    if not isinstance(value, str):
        return value
    try:
        return parse_bytes(value)
    except ValueError:
        raise ValueError(f"not a size; use {SIZE_FORMS}") from None





def _kind_of(path: Path) -> str:
    """``folder``, ``file``, or ``unknown`` (missing, or not readable here: the start says so where it is used)."""
    try:
        return "folder" if path.is_dir() else "file" if path.is_file() else "unknown"
    except OSError:  # access denied, a broken network drive: Python 3.11's pathlib raises rather than say False
        return "unknown"


def log_level_name(value: str) -> str:
    """A log level as typed, in any case, ``warn`` for ``warning`` (the setting and ``--log-level`` alike)."""
    level = value.strip().lower()
    return "warning" if level == "warn" else level


class Settings(BaseSettings):
    """Server configuration, read from the environment (``AIPC_`` prefix) or given directly."""

    model_config = SettingsConfigDict(
        env_prefix="AIPC_", populate_by_name=True, extra="ignore", case_sensitive=False, frozen=True
    )

    # --- serving ----------
    host: str = Field("127.0.0.1", validation_alias=_env("host"), description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, validation_alias=_env("port"), description="TCP port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("log_level"),
        description="Log level: debug, info, warning or error, in any case (`DEBUG`, `Info`).",
    )
    openvino_telemetry: bool = Field(
        False, validation_alias=_env("openvino_telemetry"),
        description="Let OpenVINO's telemetry run (it keeps a client id and usage counts in `~/intel` and sends "
                    "usage events, as its own consent file allows); off, it writes and sends nothing.",
    )
    request_timeout: float = Field(
        300.0, gt=0, le=3600, validation_alias=_env("request_timeout", "REQUEST_TIMEOUT"),
        description="How long one request may take (queueing included) before it is cancelled: seconds or a "
                    "duration (`90s`, `5m`), at most an hour.",
    )

    api_key: SecretStr | None = Field(
        None, validation_alias=_env("api_key"),
        description="When set, every API route needs `Authorization: Bearer KEY` (or Basic with KEY as password).",
    )
    users_file: Path | None = Field(
        None, validation_alias=_env("users_file"),
        description="A file of per-user keys (`user_id:sha256-of-key` lines, made by `aipc-chat users add NAME`): "
                    "each key acts as its user only. Replaces AIPC_API_KEY (set one of them).",
    )
    allowed_hosts: str = Field(
        "", validation_alias=_env("allowed_hosts"),
        description="Comma-separated Host names accepted besides localhost, 127.0.0.1 and [::1] (DNS-rebinding "
                    "defence); `*` accepts any.",
    )
    allowed_origins: str = Field(
        "", validation_alias=_env("allowed_origins"),
        description="Comma-separated browser origins allowed besides http(s)://localhost / 127.0.0.1 / [::1].",
    )
    max_connections: int = Field(
        256, ge=1, le=100_000, validation_alias=_env("max_connections"),
        description="Most open connections at once; past it a new one gets 503. A request head must also arrive "
                    "within 10 s (else 408).")
    max_body_bytes: int = Field(
        "20MiB", ge=1024, validation_alias=_env("max_body_bytes"), validate_default=True,
        description="Largest request body accepted, in bytes or as a size (`32MB`, `50MiB`); larger ones get 413. "
                    "The default takes a phone photo for img2img and image edits: a 12 MP JPEG is 4-8 MB, and "
                    "base64 in JSON adds a third.",
    )
    chat_rate_per_minute: int = Field(
        60, ge=1, validation_alias=_env("chat_rate_per_minute"),
        description="POST /chat turns one user_id may start per minute (burst of a third of it); then 429.",
    )

    # --- which models ----------
    demo: bool = Field(
        False, validation_alias=_env("demo", "USE_MOCKS"),
        description="Serve the tiny demo models shipped with the package (rebuilt by `aipc-chat demo-models`).",
    )
    demo_dir: Path | None = Field(
        None, validation_alias=_env("demo_dir"),
        description="A demo models folder (`llm/`, `image/`) to serve with `--demo` instead of the shipped one, "
                    "e.g. `<models>/demo` after `aipc-chat demo-models`.",
    )
    models_dir: Path = Field(
        default_factory=lambda: user_folder() / "models", validation_alias=_env("models_dir", "MODELS_CACHE_DIR"),
        description="Where downloaded, converted and demo models live (default: `models` in the per-user folder; "
                    "`./models` when aipc-chat is started from the root of a source checkout, as `make` does).",
    )
    cache_dir: Path | None = Field(
        None, validation_alias=_env("cache_dir"),
        description="OpenVINO compile cache (CACHE_DIR); default `<models_dir>/ov_cache`.",
    )
    data_dir: Path = Field(
        default_factory=lambda: user_folder() / "data", validation_alias=_env("data_dir"),
        description="Conversation history and generated images (default: `data` in the per-user folder; "
                    "`./data` when started from the root of a source checkout, as `make` does).",
    )
    auto_download_models: bool = Field(
        True, validation_alias=_env("auto_download_models", "AUTO_DOWNLOAD_MODELS"),
        description="Download a missing model at start-up.",
    )
    hf_token: SecretStr | None = Field(
        None, validation_alias=_env("hf_token", "HUGGINGFACE_TOKEN", "HF_TOKEN"),
        description="Hugging Face token for gated or private repositories.",
    )
    llm_repo: str = Field(
        DEFAULT_LLM_REPO, validation_alias=_env("llm_repo", "DEEPSEEK_REPO_ID"),
        description="Hub repository of the LLM (OpenVINO IR).",
    )
    llm_revision: str = Field(
        "main", validation_alias=_env("llm_revision", "DEEPSEEK_REVISION", "DEEPSEEK_REPO_REVISION"),
        description="Revision (branch, tag or commit) of the LLM repository.",
    )
    image_repo: str = Field(
        DEFAULT_IMAGE_REPO, validation_alias=_env("image_repo", "STABLE_DIFFUSION_REPO_ID"),
        description="Hub repository of the Stable Diffusion 1.5 pipeline (OpenVINO IR).",
    )
    image_revision: str = Field(
        "main",
        validation_alias=_env("image_revision", "STABLE_DIFFUSION_REVISION", "STABLE_DIFFUSION_REPO_REVISION"),
        description="Revision of the image repository.",
    )
    llm_path: Path | None = Field(
        None, validation_alias=_env("llm_path"),
        description="Use this local LLM as is: an OpenVINO model folder, a `.gguf` file (llama, qwen2, qwen3; "
                    "Q4_0, Q4_1, Q4_K_M, Q8_0, F16), or `ollama:NAME[:TAG]` for a model in Ollama's store.",
    )
    image_path: Path | None = Field(
        None, validation_alias=_env("image_path"),
        description="Use this local image pipeline folder (OpenVINO Stable Diffusion) as is.",
    )
    llm_endpoint: str | None = Field(
        None, validation_alias=_env("llm_endpoint", "DEEPSEEK_ENDPOINT"),
        description="Remote OpenAI-compatible base URL (e.g. http://host:8000/v1); no local LLM is loaded.",
    )
    image_endpoint: str | None = Field(
        None, validation_alias=_env("image_endpoint", "STABLE_DIFFUSION_ENDPOINT"),
        description="Remote AUTOMATIC1111 server root; no local image model is loaded.",
    )

    llm_endpoint_api_key: SecretStr | None = Field(
        None, validation_alias=_env("llm_endpoint_api_key", "DEEPSEEK_API_KEY"),
        description="Bearer key for the remote LLM endpoint.",
    )
    llm_endpoint_model: str | None = Field(
        None, validation_alias=_env("llm_endpoint_model"),
        description="Model id at the remote LLM endpoint; default: the first its /models lists.",
    )
    image_endpoint_api_key: SecretStr | None = Field(
        None, validation_alias=_env("image_endpoint_api_key", "STABLE_DIFFUSION_API_KEY"),
        description="Bearer key for the remote AUTOMATIC1111 server.",
    )

    # --- devices ----------
    llm_device: str = Field(
        "CPU", validation_alias=_env("llm_device"),
        description="OpenVINO device for the LLM: CPU, GPU, NPU or AUTO.",
    )
    image_runtime: Literal["genai", "optimum"] = Field(
        "genai", validation_alias=_env("image_runtime"),
        description="What runs Stable Diffusion: `genai` (openvino-genai, the lean default) or `optimum` "
                    "(optimum-intel and diffusers, for their extra samplers such as DPM++ and Karras schedules; "
                    "needs `pip install \"aipc-chat[optimum]\"`).",
    )
    image_device: str = Field(
        "CPU", validation_alias=_env("image_device"),
        description="OpenVINO device for Stable Diffusion: CPU, GPU, NPU or AUTO.",
    )
    embedding_path: Path | None = Field(
        None, validation_alias=_env("embedding_path"),
        description="Serve embeddings from this folder: an OpenVINO model with its tokenizer, or a Hugging Face "
                    "sentence-transformers model (converted once into the models folder; needs the convert extra).",
    )
    embedding_name: str | None = Field(
        None, validation_alias=_env("embedding_name"),
        description="The embedding model's name in requests and listings (default: its folder's name).",
    )
    embedding_device: str = Field(
        "CPU", validation_alias=_env("embedding_device"),
        description="OpenVINO device for the embedding model.",
    )

    # --- LLM ----------
    max_tokens_limit: int = Field(
        4096, ge=16, le=131072, validation_alias=_env("max_tokens_limit"),
        description="Ceiling for max_tokens; a request asking for more gets a 400.",
    )
    reasoning_budget: int = Field(
        1024, ge=0, le=131072, validation_alias=_env("reasoning_budget"),
        description="Tokens the model may think before the engine closes `</think>` and makes it answer.",
    )
    reasoning_format: Literal["deepseek", "none"] = Field(
        "deepseek", validation_alias=_env("reasoning_format"),
        description="Where /v1/chat/completions puts a reasoning model's reasoning: `deepseek` in "
                    "`reasoning_content`, `none` in `content` inside its `<think>...</think>` block (for clients "
                    "that drop `reasoning_content`); a request's `reasoning_format` overrides it.",
    )
    context_length: int | None = Field(
        None, ge=64, validation_alias=_env("context_length"),
        description="Context window in tokens; default: the model's max_position_embeddings, at most 32768.",
    )
    kv_cache_gb: int = Field(
        1, ge=1, le=64, validation_alias=_env("kv_cache_gb"),
        description="Most KV cache for continuous batching, in whole GB (`2`, `2GB`, `2GiB`; CPU/GPU): it fills as "
                    "new prompts arrive and is kept (prefix cache); capped lower when every sequence at full context "
                    "needs less.",
    )
    max_num_seqs: int = Field(
        16, ge=1, le=256, validation_alias=_env("max_num_seqs"),
        description="Sequences generated at once by continuous batching.",
    )
    llm_queue_size: int = Field(
        64, ge=1, le=4096, validation_alias=_env("llm_queue_size"),
        description="Requests that may wait for a slot before new ones are refused with 503.",
    )
    keep_alive: str = Field(
        "5m", validation_alias=_env("keep_alive"),
        description="How long a model stays loaded with nothing to do, per model (`30s`, `5m`, `5min`, `1h30m`, "
                    "seconds; `-1` or any negative value never unloads, `0` right after each request): its memory "
                    "is given back, and the next request loads it again (through the compile cache).",
    )
    load_on_start: bool = Field(
        True, validation_alias=_env("load_on_start"),
        description="Load the models at start; `false` answers at once and loads each model on its first request.",
    )
    memory_limit: str | None = Field(
        None, validation_alias=_env("memory_limit"),
        description="Most memory the resident models may take (`8GB` = 8*10^9 bytes, `8GiB` or `8G` = 8*2^30, "
                    "`800MB`): loading one "
                    "that would exceed it first unloads the least recently used idle model; a request that cannot "
                    "fit gets 503 with Retry-After. Unset: no limit.",
    )
    batch_window_ms: float = Field(
        5.0, ge=0, le=100, validation_alias=_env("batch_window_ms"),
        description="When idle, wait up to this long (milliseconds, or a duration such as `5ms`) for requests "
                    "the server is still reading, so ones sent together share their first step; a lone request "
                    "does not wait.",
    )
    llm_warmup: bool = Field(
        True, validation_alias=_env("llm_warmup"),
        description="Generate one token at load, so the first request does not pay OpenVINO's first-inference "
                    "cost (seconds on a 1.5B model); /ready turns true after it.",
    )
    prefix_caching: bool = Field(
        True, validation_alias=_env("prefix_caching"),
        description="Reuse the KV cache of shared prompt prefixes (multi-turn chats).",
    )
    npu_max_prompt_len: int = Field(
        1024, ge=64, validation_alias=_env("npu_max_prompt_len"),
        description="NPU only: static prompt length the LLM is compiled for.",
    )
    npu_min_response_len: int = Field(
        256, ge=16, validation_alias=_env("npu_min_response_len"),
        description="NPU only: tokens reserved for the answer.",
    )

    # --- images ----------
    image_max_size: int = Field(
        1024, ge=64, le=2048, validation_alias=_env("image_max_size"),
        description="Largest width or height accepted (the demo model takes at most 512).",
    )
    image_max_n: int = Field(
        4, ge=1, le=16, validation_alias=_env("image_max_n"), description="Most images one request may ask for.",
    )
    image_max_steps: int = Field(
        100, ge=1, le=500, validation_alias=_env("image_max_steps"), description="Most denoising steps per image.",
    )
    image_queue_size: int = Field(
        8, ge=1, le=256, validation_alias=_env("image_queue_size"),
        description="Image jobs that may wait before new ones are refused with 503.",
    )
    min_free_mb: int = Field(
        200, ge=0, validation_alias=_env("min_free_mb"),
        description="Free disk space the data folder must have before a picture is rendered, in MB or as a size "
                    "(`1GB`); 0 turns the check off.")
    image_retention: int = Field(
        1000, ge=1, validation_alias=_env("image_retention"),
        description="Generated images kept on disk; the oldest are pruned beyond it.",
    )
    npu_image_width: int = Field(
        512, ge=64, le=2048, validation_alias=_env("npu_image_width"),
        description="NPU only: the static image width the pipeline is compiled for.",
    )
    npu_image_height: int = Field(
        512, ge=64, le=2048, validation_alias=_env("npu_image_height"),
        description="NPU only: the static image height the pipeline is compiled for.",
    )

    # --- conversations ----------
    conversation_history_limit: int = Field(
        10, ge=0, le=1000, validation_alias=_env("conversation_history_limit", "CONVERSATION_HISTORY_LIMIT"),
        description="Earlier exchanges (user + assistant) fed back to the model in /chat.",
    )

    chat_max_tokens: int = Field(
        2048, ge=16, le=131072, validation_alias=_env("chat_max_tokens"),
        description="Tokens one /chat answer may take (reasoning included) unless the request says less.",
    )
    system_prompt_file: Path | None = Field(
        None, validation_alias=_env("system_prompt_file"),
        description="A text file that replaces the built-in /chat system prompt.",
    )
    blocked_terms_file: Path | None = Field(
        None, validation_alias=_env("blocked_terms_file"),
        description="A file of terms (one per line) that image prompts may not contain; replaces the built-in list.",
    )

    # --- serving a team (several front ends) ----------
    database_url: SecretStr | None = Field(
        None, validation_alias=_env("database_url"),
        description="Keep conversation history, image jobs and rate limits in this database instead of "
                    "`<data_dir>/history.sqlite3`: `postgresql://user:password@host:5432/db` lets several front ends "
                    "(`aipc-chat serve` processes on one host or many) share them. `sqlite:///path` also works, "
                    "for front ends on one host.",
    )
    image_store_url: str | None = Field(
        None, validation_alias=_env("image_store_url"),
        description="Keep generated pictures in S3-compatible object storage (`s3://bucket/prefix`) instead of "
                    "`<data_dir>/images`; credentials from the standard `AWS_*` variables or files.",
    )
    s3_endpoint: str | None = Field(
        None, validation_alias=_env("s3_endpoint"),
        description="The S3 API's URL for MinIO, SeaweedFS or another S3-compatible server "
                    "(e.g. `http://127.0.0.1:8333`); unset: AWS itself (or `AWS_ENDPOINT_URL`).",
    )
    image_url_expiry: int = Field(
        0, ge=0, le=604_800, validation_alias=_env("image_url_expiry"),
        description="With `AIPC_IMAGE_STORE_URL`: 0 serves picture URLs through the server (any front end, behind "
                    "its API key); N > 0 hands out presigned storage URLs valid N seconds instead (at most 7 days, "
                    "S3's limit).",
    )
    worker_timeout: float = Field(
        15.0, ge=3, le=3600, validation_alias=_env("worker_timeout"),
        description="With `AIPC_DATABASE_URL`: a front end not heard from this long (seconds or a duration) is "
                    "taken for dead by the others, which end its unfinished image jobs and settle the pictures its "
                    "turns left pending.",
    )
    worker_name: str | None = Field(
        None, validation_alias=_env("worker_name"),
        description="This front end's name in the shared database (its image jobs, its heartbeat); "
                    "default `host:pid`.",
    )

    @field_validator("llm_device", "image_device", "embedding_device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        device = value.strip().upper()
        if not DEVICE_PATTERN.match(device):
            raise ValueError("takes CPU, GPU (GPU.0, GPU.1, ...), NPU or AUTO (AUTO:GPU,CPU), in any case")
        return device

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        level = log_level_name(value) if isinstance(value, str) else value
        if isinstance(level, str) and level not in LOG_LEVELS:
            raise ValueError(f"takes {', '.join(LOG_LEVELS)}, in any case (DEBUG, Info)")
        return level

    @field_validator("request_timeout", "worker_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> Any:
        return _seconds(value)

    @field_validator("keep_alive", mode="after")
    @classmethod
    def _keep_alive(cls, value: str) -> str:
        _seconds(value, forever=True)  # kept as written (it is shown as given); read through keep_alive_seconds
        return value

    @field_validator("batch_window_ms", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        if isinstance(value, str) and _DURATION.fullmatch(value.strip().lower()):  # a unit: "5ms", "0.01s"
            return _seconds(value) * 1000
        return value  # a plain number is in milliseconds

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _body_size(cls, value: Any) -> Any:
        return _bytes(value)

    @field_validator("memory_limit", mode="after")
    @classmethod
    def _memory_limit(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        _bytes(value)  # kept as written; read through memory_limit_bytes
        return value

    @field_validator("kv_cache_gb", mode="before")
    @classmethod
    def _kv_cache(cls, value: Any) -> Any:
        gb = _in_units(_checked_size(value, "GB"), 10**9, 2**30)
        if isinstance(gb, float) and not math.isclose(gb, round(gb), abs_tol=1e-6):
            raise ValueError(f"that is {gb:.2f} GB; give whole GB (2, 2GB, 2GiB, 2048MiB)")
        return round(gb) if isinstance(gb, float) else gb

    @field_validator("min_free_mb", mode="before")
    @classmethod
    def _free_space(cls, value: Any) -> Any:
        mb = _in_units(_checked_size(value, "MB"), 10**6, 2**20)
        return math.ceil(mb) if isinstance(mb, float) else mb  # up: a small check never becomes no check (0)

    @field_validator("models_dir", "data_dir", "cache_dir", "demo_dir", "llm_path", "image_path", "embedding_path",
                     "users_file", "system_prompt_file", "blocked_terms_file", mode="before")
    @classmethod
    def _home(cls, value: Any) -> Any:
        return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value

    @field_validator("models_dir", "data_dir", "cache_dir", "demo_dir", "image_path", "embedding_path")
    @classmethod
    def _a_folder(cls, value: Path | None) -> Path | None:
        if value is not None and _kind_of(value) == "file":
            raise ValueError("a file, where this setting takes a folder")
        return value

    @field_validator("users_file", "system_prompt_file", "blocked_terms_file")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None and _kind_of(value) == "folder":
            raise ValueError("a folder, where this setting takes a text file")
        return value

    @field_validator("llm_path")
    @classmethod
    def _llm_path(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        gguf, kind = value.suffix.lower() == ".gguf", _kind_of(value)
        if gguf and kind == "folder":
            raise ValueError(f"a folder named like a .gguf file; this setting takes {LLM_PATH_FORMS}")
        if not gguf and kind == "file":
            raise ValueError(f"a file, but not a .gguf file; this setting takes {LLM_PATH_FORMS}")
        return value

    @field_validator("llm_endpoint", "image_endpoint", "database_url", "image_store_url", "s3_endpoint",
                     "worker_name", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_kind(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().split("://", 1)[0].split("+", 1)[0].lower()
            if scheme not in ("postgresql", "postgres", "sqlite"):
                raise ValueError("takes postgresql://user:password@host:port/database or sqlite:///path/to/file")
        return value

    @field_validator("image_store_url", mode="after")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", value):
            raise ValueError("takes s3://bucket or s3://bucket/prefix (a bucket name is 3-63 lower-case letters, "
                             "digits, dots and hyphens)")
        return value

    @model_validator(mode="after")
    def _one_kind_of_key(self) -> Settings:
        if self.users_file is not None and self.api_key is not None:
            raise ValueError("set AIPC_USERS_FILE (a key per user) or AIPC_API_KEY (one key for all), not both")
        return self

    @property
    def memory_limit_bytes(self) -> int | None:
        """``memory_limit`` in bytes; None for no limit."""
        return parse_bytes(self.memory_limit) if self.memory_limit else None

    @property
    def keep_alive_seconds(self) -> float | None:
        """``keep_alive`` in seconds; None for never (as is a century or more)."""
        seconds = parse_duration(self.keep_alive)
        return None if seconds is None or seconds >= KEEP_FOREVER_SECONDS else seconds

    @property
    def extra_hosts(self) -> list[str]:
        """The configured extra Host names."""
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def extra_origins(self) -> list[str]:
        """The configured extra browser origins."""
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    @property
    def compile_cache_dir(self) -> Path:
        """The OpenVINO compile cache folder."""
        return self.cache_dir if self.cache_dir is not None else self.models_dir / "ov_cache"

    @property
    def demo_models_dir(self) -> Path:
        """The demo models ``--demo`` serves: ``demo_dir``, else the ones shipped with the package."""
        return self.demo_dir if self.demo_dir is not None else SHIPPED_DEMO_DIR

    @property
    def demo_build_dir(self) -> Path:
        """Where `aipc-chat demo-models` builds the demo models."""
        return self.models_dir / "demo"


def config_table() -> str:
    """The configuration table of docs/configuration.md, generated from the fields (a unit test keeps it in step)."""
    rows = ["| variable | also read as | default | what it does |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else []
        seed = ", ".join(f"`{n}`" for n in names if n != name and not n.startswith("AIPC_")) or ""
        default = "per-user folder" if info.default_factory else "" if info.default is None else f"`{info.default}`"
        rows.append(f"| `AIPC_{name.upper()}` | {seed} | {default} | {info.description} |")
    return "\n".join(rows)


# --- naming settings in messages ----------

def public_url(url: str) -> str:
    """A URL fit for a message, a log or /ready: no user name, password, query or fragment (where keys may be)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def env_names(field: str) -> list[str]:
    """Every environment name a field is read from: ``AIPC_<NAME>`` first, then the seed project's."""
    alias = Settings.model_fields[field].validation_alias
    names = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else []
    return [f"AIPC_{field.upper()}", *(n for n in names if n != field and n.upper() != f"AIPC_{field.upper()}")]


def env_set(field: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment sets a field, by any of its names (rather than a flag or the default)."""
    present = {name.upper() for name in (os.environ if environ is None else environ)}
    return any(name.upper() in present for name in env_names(field))


def env_name(field: str, environ: Mapping[str, str] | None = None) -> str:
    """The environment variable that set a field (a seed name when that is what was used), else ``AIPC_<NAME>``."""
    present = {name.upper() for name in (os.environ if environ is None else environ)}
    names = env_names(field)
    return next((name for name in names if name.upper() in present), names[0])


# Units of the fields whose bounds are counted in one (a bound is shown with it)
_UNITS = {"request_timeout": " seconds", "batch_window_ms": " ms", "max_body_bytes": " bytes", "kv_cache_gb": " GB",
          "min_free_mb": " MB"}
_TYPE_TEXT = {"int_parsing": "takes a whole number", "int_from_float": "takes a whole number",
              "float_parsing": "takes a number", "bool_parsing": "takes true or false (also 1/0, yes/no, on/off)",
              "path_type": "takes a path"}
_BOUND_TEXT = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
               "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}


def problem_lines(exc: ValidationError, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per refused setting, naming its environment variable and what it takes: ``AIPC_KEEP_ALIVE='5
    minutes please': ... is not a duration; use seconds (300), ...``."""
    return [_problem_line(error, environ) for error in exc.errors()]


def _problem_line(error: ErrorDetails, environ: Mapping[str, str] | None) -> str:
    text = _problem_text(error)
    field = str(error["loc"][0]) if error.get("loc") else ""
    if field not in Settings.model_fields:  # a rule across settings: its message names them
        return text
    environ = os.environ if environ is None else environ
    name = env_name(field, environ)
    typed = {key.upper(): value for key, value in environ.items()}.get(name.upper())
    given = typed if typed is not None else error.get("input")  # as typed, not as a validator turned it
    given = str(given) if isinstance(given, Path) else given
    secret = Settings.model_fields[field].annotation in (SecretStr, SecretStr | None)
    shown = f"={given!r}" if isinstance(given, str | int | float) and not secret else ""
    return f"{name}{shown}: {text}"


def _problem_text(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    field = str(error["loc"][0]) if error.get("loc") else ""
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind in _TYPE_TEXT:
        return _TYPE_TEXT[kind]
    if kind in _BOUND_TEXT:
        words, key = _BOUND_TEXT[kind]
        bound = ctx.get(key)
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {words} {bound}{_UNITS.get(field, '')}"
    if kind == "literal_error":
        return f"takes {ctx.get('expected')}"
    return str(error["msg"])


def unknown_settings(environ: Mapping[str, str], extra_names: Iterable[str] = ()) -> list[str]:
    """A warning for each ``AIPC_`` name (in the environment, or in ``extra_names``) that is no
    setting, with the closest setting's name: ``AIPC_KEEP_ALVE is not a setting; did you mean AIPC_KEEP_ALIVE?``."""
    known = {name.upper().removeprefix("AIPC_") for field in Settings.model_fields for name in env_names(field)
             if name.upper().startswith("AIPC_")}
    # The seed project's names, each to its AIPC_ name: AIPC_DEEPSEEK_ENDPOINT is AIPC_LLM_ENDPOINT's old name.
    seed = {name.upper(): env_name(field) for field in Settings.model_fields for name in env_names(field)
            if not name.upper().startswith("AIPC_")}
    warnings = []
    for name in sorted({*environ, *extra_names}):
        upper = name.upper()
        if not upper.startswith("AIPC_") or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        rest = upper.removeprefix("AIPC_")
        if rest in known:
            continue
        old = difflib.get_close_matches(rest, sorted(seed), n=1, cutoff=0.8)
        close = difflib.get_close_matches(rest, sorted(known), n=1, cutoff=0.6)  # the prefix would make all close
        hint = (f"did you mean {seed[old[0]]} (the old name {old[0]})?" if old else f"did you mean AIPC_{close[0]}?"
                if close else "it is ignored (docs/configuration.md lists the settings)")
        warnings.append(f"{name} is not a setting; {hint}")
    return warnings
