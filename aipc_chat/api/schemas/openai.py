"""Request bodies of the OpenAI-compatible endpoints, with their bounds; ``to_params`` passes plain types inward."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aipc_chat.api.schemas.common import KeepAlive, LLMSeed, NamedToolChoice, ToolDef, tool_set
from aipc_chat.engines.contract import JSON_OBJECT, GenParams, ToolSet
from aipc_chat.errors import InvalidRequest, UnsupportedParameter
from aipc_chat.serving.params import Asked, gen_params

MAX_MESSAGE_CHARS = 200_000


def stop_list(value: str | list[str] | None) -> list[str] | None:
    """``stop`` as a list: up to 4 non-empty strings (OpenAI's bound)."""
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
        raise ValueError("stop takes up to 4 non-empty strings of at most 256 characters")
    return stops


class ContentPart(BaseModel):
    """A part of a message's content; only ``text`` parts are served (``check_supported`` says so of the others)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)


class FunctionCall(BaseModel):
    """``tool_calls[].function`` of an earlier assistant message: the arguments as a JSON string."""

    name: str = Field(max_length=64)
    arguments: str = Field(default="{}", max_length=MAX_MESSAGE_CHARS)


class ToolCallIn(BaseModel):
    """An earlier assistant message's call."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default="", max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of the conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(default=None, max_length=MAX_MESSAGE_CHARS)
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=128)
    tool_call_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # OpenAI: only an assistant message (one with tool calls) may come without content
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        """The message's text, parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    """``stream_options``."""

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(BaseModel):
    """The sampling fields both OpenAI endpoints take, under OpenAI's names (and vLLM's for the extensions)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    seed: LLMSeed = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    ignore_eos: bool = False
    keep_alive: KeepAlive = None  # Ollama's: how long the model stays loaded after this request

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        return stop_list(value)

    def _asked(self) -> Asked:
        return Asked(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                     seed=self.seed, stop=self.stop, presence_penalty=self.presence_penalty,
                     frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
                     ignore_eos=self.ignore_eos, keep_alive=self.keep_alive)

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    n: int = Field(default=1, ge=1, le=128)
    tools: list[ToolDef] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    logprobs: bool | None = None
    top_logprobs: int | None = None
    reasoning_budget: int | None = Field(default=None, ge=0, le=131072)  # OVMS's name
    # llama.cpp's: deepseek (and auto) split the reasoning into reasoning_content; none keeps it in content;
    # deepseek-legacy does both.
    reasoning_format: Literal["deepseek", "auto", "none", "deepseek-legacy"] | None = None

    def check_supported(self) -> None:
        """Refuse, clearly, what this server does not do (rather than ignoring it)."""
        if self.n != 1:
            raise UnsupportedParameter("Only n=1 is supported.", param="n")
        if self.logprobs or self.top_logprobs:
            raise UnsupportedParameter("logprobs are not supported by this server.", param="logprobs")
        if self.tool_set() is not None and self.response_format is not None and self.response_format.type != "text":
            raise UnsupportedParameter("tools and a JSON response_format cannot be combined here.",
                                       param="response_format")
        for i, message in enumerate(self.messages):
            for j, call in enumerate(message.tool_calls or []):
                _arguments(call, f"messages.{i}.tool_calls.{j}.function.arguments")
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if part.type in ("image_url", "input_image", "image"):
                    raise UnsupportedParameter("Image input is not supported by this model; send text only.",
                                               param=f"messages.{i}.content.{j}")
                if part.type != "text" or part.text is None:
                    raise UnsupportedParameter(f"Content parts of type '{part.type}' are not supported; send text "
                                               "parts.", param=f"messages.{i}.content.{j}")
        if all(m.role in ("system", "developer") for m in self.messages):
            raise InvalidRequest("messages needs at least one user or assistant message.", param="messages")

    def chat_messages(self) -> list[dict[str, Any]]:
        """Plain role/content dicts (developer messages act as system messages), with earlier calls."""
        out: list[dict[str, Any]] = []
        for i, m in enumerate(self.messages):
            message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "name": c.function.name,
                     "arguments": _arguments(c, f"messages.{i}.tool_calls.{j}.function.arguments")}
                    for j, c in enumerate(m.tool_calls)]
            if m.role == "tool" and m.tool_call_id:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def tool_set(self) -> ToolSet | None:
        """The tools the model may call, and how (None: none)."""
        return tool_set(self.tools, self.tool_choice, self.parallel_tool_calls)

    def to_params(self) -> GenParams:
        """The engine's parameters (``DEFAULTS["openai_chat"]`` where the request is silent)."""
        json_schema = None
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            json_schema = JSON_OBJECT
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise InvalidRequest("response_format.json_schema is required for type json_schema.",
                                     param="response_format")
            json_schema = json.dumps(fmt.json_schema.schema_ or {"type": "object"})
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return gen_params("openai_chat", replace(self._asked(), max_tokens=max_tokens, json_schema=json_schema,
                                                 reasoning_budget=self.reasoning_budget, tools=self.tool_set()))


def _arguments(call: ToolCallIn, param: str) -> dict[str, Any]:
    """An earlier call's arguments, parsed (they come as a JSON string)."""
    try:
        value = json.loads(call.function.arguments or "{}")
    except ValueError:
        raise InvalidRequest("A tool call's arguments must be a JSON object (as a string).", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("A tool call's arguments must be a JSON object (as a string).", param=param)
    return value


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: a plain prompt, no chat template."""

    prompt: str | list[str] = Field(max_length=MAX_MESSAGE_CHARS)
    n: int = Field(default=1, ge=1, le=128)
    best_of: int | None = Field(default=None, ge=1, le=128)
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    def text(self) -> str:
        """The one prompt."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise UnsupportedParameter("Only one prompt per request is supported.", param="prompt")
        return self.prompt[0]

    def check_supported(self) -> None:
        """Refuse, clearly, what this server does not do."""
        if self.n != 1 or (self.best_of or 1) != 1:
            raise UnsupportedParameter("Only n=1 (and best_of=1) is supported.", param="n")
        if self.echo:
            raise UnsupportedParameter("echo is not supported.", param="echo")
        if self.logprobs:
            raise UnsupportedParameter("logprobs are not supported by this server.", param="logprobs")
        if self.suffix:
            raise UnsupportedParameter("suffix (insertion) is not supported.", param="suffix")
        if not self.text():
            raise InvalidRequest("prompt must not be empty.", param="prompt")

    def to_params(self) -> GenParams:
        """The engine's parameters (``DEFAULTS["openai_completions"]`` where the request is silent)."""
        return gen_params("openai_completions", self._asked())


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: a text, texts, or token ids (one list, or one per input)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, token ids, or a list of token id lists.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    keep_alive: KeepAlive = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or len(value) > 2048):
            raise ValueError("input takes 1 to 2048 items")
        if value == "" or (isinstance(value, list) and any(item in ("", []) for item in value)):
            raise ValueError("input must not be empty")
        return value
