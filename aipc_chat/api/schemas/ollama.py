"""Request bodies of Ollama's API (``/api/chat``, ``/api/generate``, ``/api/show``, ...), as its clients send them."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aipc_chat.api.schemas.common import KeepAlive, LLMSeed, ToolDef, tool_set
from aipc_chat.engines.contract import JSON_OBJECT, GenParams, ToolSet
from aipc_chat.errors import InvalidRequest, UnsupportedParameter
from aipc_chat.serving.params import Asked, gen_params

MAX_TEXT = 200_000


class OllamaOptions(BaseModel):
    """``options``: the sampling and length options we honour; the others (``num_gpu``, ``num_thread``, ``mirostat``,
    ...) concern llama.cpp and are ignored, as Ollama ignores options a runner does not know."""

    model_config = ConfigDict(extra="ignore")

    num_predict: int | None = Field(default=None, ge=-2)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    seed: LLMSeed = None
    stop: list[str] | None = Field(default=None, max_length=16)
    num_ctx: int | None = Field(default=None, ge=1)
    repeat_penalty: float | None = Field(default=None, gt=0, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    ignore_eos: bool = False  # an extension, as our OpenAI endpoint has it (vLLM's name): benchmarks, tests

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class OllamaFunctionCall(BaseModel):
    """``tool_calls[].function`` of an earlier assistant message: arguments as an object."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    """An earlier assistant message's call."""

    model_config = ConfigDict(extra="ignore")

    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    """One message of ``/api/chat``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(default="", max_length=MAX_TEXT)
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = Field(default=None, max_length=128)
    tool_name: str | None = Field(default=None, max_length=64)


class OllamaGeneration(BaseModel):
    """What ``/api/chat`` and ``/api/generate`` share: the model, streaming, thinking, format and options."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    stream: bool = True
    think: bool | Literal["low", "medium", "high"] | None = None
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: OllamaOptions = Field(default_factory=OllamaOptions)
    keep_alive: KeepAlive = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def check_supported(self) -> None:
        """Refuse what this server does not do (each request type says what, after this)."""
        if self.logprobs or self.top_logprobs:  # as /v1/chat/completions answers them
            raise UnsupportedParameter("logprobs are not supported by this server.", param="logprobs")

    @property
    def thinks(self) -> bool:
        """Whether a reasoning model reasons: unless ``think`` is false (levels count as true)."""
        return self.think is not False

    def to_params(self, max_context: int) -> GenParams:
        """The engine's parameters (``DEFAULTS["ollama"]`` where the request is silent)."""
        o = self.options
        if o.num_ctx is not None and o.num_ctx > max_context:
            raise InvalidRequest(f"options.num_ctx is {o.num_ctx}; this model's context is {max_context} tokens.",
                                 param="options.num_ctx")
        schema = None
        if self.format == "json":
            schema = JSON_OBJECT
        elif isinstance(self.format, dict):
            schema = json.dumps(self.format)
        return gen_params("ollama", Asked(
            max_tokens=o.num_predict, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, seed=o.seed,
            stop=o.stop, repetition_penalty=o.repeat_penalty, presence_penalty=o.presence_penalty,
            frequency_penalty=o.frequency_penalty, json_schema=schema, ignore_eos=o.ignore_eos,
            keep_alive=self.keep_alive, think=self.thinks))


class OllamaChatRequest(OllamaGeneration):
    """``POST /api/chat``."""

    messages: list[OllamaMessage] = Field(default_factory=list, max_length=1000)
    tools: list[ToolDef] | None = Field(default=None, max_length=128)

    def check_supported(self) -> None:
        """Refuse what this server does not do, in Ollama's words where it has them."""
        super().check_supported()
        if self.tools and self.format:
            raise UnsupportedParameter("tools and format cannot be combined here", param="format")
        for i, message in enumerate(self.messages):
            if message.images:
                raise UnsupportedParameter(f"{self.model} does not support images (input)",
                                           param=f"messages.{i}.images")

    def tool_set(self) -> ToolSet | None:
        """The tools the model may call (Ollama has no tool_choice: the model decides)."""
        return tool_set(self.tools, None, True)

    def to_params(self, max_context: int) -> GenParams:
        """As for /api/generate, with the tools."""
        return replace(super().to_params(max_context), tools=self.tool_set())

    def chat_messages(self) -> list[dict[str, Any]]:
        """Plain role/content dicts, with earlier calls (arguments as objects)."""
        out: list[dict[str, Any]] = []
        for m in self.messages:
            message: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                message["tool_calls"] = [{"id": "", "name": c.function.name, "arguments": c.function.arguments}
                                         for c in m.tool_calls]
            out.append(message)
        return out


class OllamaGenerateRequest(OllamaGeneration):
    """``POST /api/generate``."""

    prompt: str = Field(default="", max_length=MAX_TEXT)
    system: str | None = Field(default=None, max_length=MAX_TEXT)
    suffix: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    images: list[str] | None = None

    def check_supported(self) -> None:
        """Refuse what this server does not do."""
        super().check_supported()
        if self.images:
            raise UnsupportedParameter(f"{self.model} does not support images (input)", param="images")
        if self.suffix:
            raise UnsupportedParameter(f"{self.model} does not support insert (suffix)", param="suffix")
        if self.template:
            raise UnsupportedParameter("a per-request template is not supported; the model's own is used",
                                       param="template")
        if self.context:
            raise UnsupportedParameter("context (the deprecated token history) is not supported; use /api/chat",
                                       param="context")

    def chat_messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (with ``system`` first)."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": self.prompt}]


class OllamaEmbedRequest(BaseModel):
    """``/api/embed``: one text or several; ``/api/embeddings`` (the older form): one ``prompt``."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    input: str | list[str] | None = None
    prompt: str | None = None
    truncate: bool = True
    keep_alive: KeepAlive = None

    def texts(self) -> list[str]:
        """What to embed, in order."""
        given = self.input if self.input is not None else self.prompt
        if given is None:
            raise InvalidRequest("input is required: a text or a list of texts.", param="input")
        return [given] if isinstance(given, str) else list(given)


class OllamaModelRequest(BaseModel):
    """``/api/show``, ``/api/pull``, ``/api/delete``: a model by name (``name`` is the older field)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    stream: bool = True

    @property
    def model_name(self) -> str:
        """The model asked for."""
        name = self.model or self.name
        if not name:
            raise InvalidRequest("model is required", param="model")
        return name
