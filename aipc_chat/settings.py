"""The one configuration object: every knob, its environment names and its description.

Each field reads ``AIPC_<NAME>``; the seed project's names (``USE_MOCKS``, ``MODELS_CACHE_DIR``, ``DEEPSEEK_*``,
``STABLE_DIFFUSION_*``, ...) are accepted as aliases so old deployments keep working. Nothing reads settings at
import time: build one ``Settings`` and pass it down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVICE_PATTERN = r"^(CPU|GPU(\.\d+)?|NPU|AUTO(:[A-Z0-9.,]+)?)$"
DEFAULT_LLM_REPO = "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-ov"
DEFAULT_IMAGE_REPO = "OpenVINO/stable-diffusion-v1-5-int8-ov"
NONE = "none"  # AIPC_LLM_REPO / AIPC_IMAGE_REPO: serve no model of that kind
SHIPPED_DEMO_DIR = Path(__file__).resolve().parent / "demo"  # the demo models, shipped built with the package


def user_folder() -> Path:
    """Where an installed aipc-chat keeps its models and data unless told otherwise: the platform's per-user data
    folder (``%LOCALAPPDATA%\\aipc-chat`` on Windows, ``~/.local/share/aipc-chat`` on Linux, ``~/Library/Application
    Support/aipc-chat`` on macOS), never the working directory."""
    import platformdirs

    return Path(platformdirs.user_data_dir("aipc-chat", appauthor=False))


def parse_duration(text: str) -> float | None:
    """``30s``, ``5m``, ``1h``, ``250ms`` or plain seconds; ``-1`` (never) is None."""
    text = text.strip().lower()
    if text == "-1":
        return None
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * scale
    return float(text)


SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``8GB`` (8·10⁹ bytes), ``8GiB`` (8·2³⁰), ``800MB``, ``1.5GB`` or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 8GB, 8GiB or 800MB)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def _env(name: str, *seed_names: str) -> AliasChoices:
    """Accept the field name, ``AIPC_<NAME>`` and the seed project's environment names."""
    return AliasChoices(name, f"AIPC_{name.upper()}", *seed_names)


class Settings(BaseSettings):
    """Server configuration, read from the environment (``AIPC_`` prefix) or given directly."""

    model_config = SettingsConfigDict(
        env_prefix="AIPC_", populate_by_name=True, extra="ignore", case_sensitive=False, frozen=True
    )

    # --- serving ----------
    host: str = Field("127.0.0.1", validation_alias=_env("host"), description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, validation_alias=_env("port"), description="TCP port to listen on.")
    log_level: str = Field(
        "info", pattern=r"^(debug|info|warning|error)$", validation_alias=_env("log_level"),
        description="Log level: debug, info, warning or error.",
    )
    openvino_telemetry: bool = Field(
        False, validation_alias=_env("openvino_telemetry"),
        description="Let OpenVINO's telemetry run (it keeps a client id and usage counts in `~/intel` and sends "
                    "usage events, as its own consent file allows); off, it writes and sends nothing.",
    )
    request_timeout: float = Field(
        300.0, gt=0, le=3600, validation_alias=_env("request_timeout", "REQUEST_TIMEOUT"),
        description="Seconds one request may take (queueing included) before it is cancelled.",
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
        2 * 1024 * 1024, ge=1024, validation_alias=_env("max_body_bytes"),
        description="Largest request body accepted; larger ones get 413.",
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
                    "a checkout's Makefile sets `./models`).",
    )
    cache_dir: Path | None = Field(
        None, validation_alias=_env("cache_dir"),
        description="OpenVINO compile cache (CACHE_DIR); default `<models_dir>/ov_cache`.",
    )
    data_dir: Path = Field(
        default_factory=lambda: user_folder() / "data", validation_alias=_env("data_dir"),
        description="Conversation history and generated images (default: `data` in the per-user folder; a "
                    "checkout's Makefile sets `./data`).",
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
        None, validation_alias=_env("image_path"), description="Use this local image pipeline folder as is."
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
        "CPU", pattern=DEVICE_PATTERN, validation_alias=_env("llm_device"),
        description="OpenVINO device for the LLM: CPU, GPU, NPU or AUTO.",
    )
    image_runtime: Literal["genai", "optimum"] = Field(
        "genai", validation_alias=_env("image_runtime"),
        description="What runs Stable Diffusion: `genai` (openvino-genai, the lean default) or `optimum` "
                    "(optimum-intel and diffusers, for their extra samplers such as DPM++ and Karras schedules; "
                    "needs `pip install \"aipc-chat[optimum]\"`).",
    )
    image_device: str = Field(
        "CPU", pattern=DEVICE_PATTERN, validation_alias=_env("image_device"),
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
        "CPU", pattern=DEVICE_PATTERN, validation_alias=_env("embedding_device"),
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
        description="Most KV cache for continuous batching, in GB (CPU/GPU): it fills as new prompts arrive and "
                    "is kept (prefix cache); capped lower when every sequence at full context needs less.",
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
        "5m", validation_alias=_env("keep_alive"), pattern=r"^\s*(-1|\d+(\.\d+)?\s*(ms|s|m|h)?)\s*$",
        description="How long a model stays loaded with nothing to do, per model (`30s`, `5m`, `1h`, seconds; `-1` "
                    "never unloads, `0` right after each request): its memory is given back, and the next "
                    "request loads it again (through the compile cache).",
    )
    load_on_start: bool = Field(
        True, validation_alias=_env("load_on_start"),
        description="Load the models at start; `false` answers at once and loads each model on its first request.",
    )
    memory_limit: str | None = Field(
        None, validation_alias=_env("memory_limit"), pattern=r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]|[bB])?\s*$",
        description="Most memory the resident models may take (`8GB` = 8·10⁹ bytes, `8GiB`, `800MB`): loading one "
                    "that would exceed it first unloads the least recently used idle model; a request that cannot "
                    "fit gets 503 with Retry-After. Unset: no limit.",
    )
    batch_window_ms: float = Field(
        5.0, ge=0, le=100, validation_alias=_env("batch_window_ms"),
        description="When idle, wait up to this long for requests the server is still reading, so ones sent "
                    "together share their first step; a lone request does not wait.",
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
        description="Free disk space (MB) the data folder must have before a picture is rendered; 0 turns the "
                    "check off.")
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

    @field_validator("llm_device", "image_device", "embedding_device", mode="before")
    @classmethod
    def _upper_device(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("llm_endpoint", "image_endpoint", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

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
        """``keep_alive`` in seconds; None for never."""
        return parse_duration(self.keep_alive)

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
    """The README's configuration table, generated from the fields (a unit test keeps the README in step)."""
    rows = ["| variable | also read as | default | what it does |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else []
        seed = ", ".join(f"`{n}`" for n in names if n != name and not n.startswith("AIPC_")) or ""
        default = "per-user folder" if info.default_factory else "" if info.default is None else f"`{info.default}`"
        rows.append(f"| `AIPC_{name.upper()}` | {seed} | {default} | {info.description} |")
    return "\n".join(rows)
