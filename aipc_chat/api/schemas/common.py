"""Request fields several APIs share."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from aipc_chat.engines.contract import Tool, ToolSet
from aipc_chat.errors import InvalidRequest
from aipc_chat.serving.params import IMAGE_SEED_MAX, LLM_SEED_MAX, RANDOM_SEED
from aipc_chat.settings import KEEP_FOREVER_SECONDS, parse_duration

# -1 is "random" everywhere; the serving layer's ``seed`` turns it (and None) into None.
LLMSeed = Annotated[int | None, Field(ge=RANDOM_SEED, le=LLM_SEED_MAX)]
ImageSeed = Annotated[int | None, Field(ge=RANDOM_SEED, le=IMAGE_SEED_MAX)]


def keep_alive_seconds(value: object) -> float | None:
    """Ollama's ``keep_alive``: seconds (a number) or a duration (``30s``, ``5m``, ``1h``); negative (or a century
    and more) keeps the model loaded for good (``math.inf``), 0 unloads it right after the request; None leaves the
    server's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("keep_alive takes seconds or a duration such as 30s, 5m or 1h")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            return math.inf
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ValueError(f"keep_alive {value!r} is not a duration such as 30s, 5m or 1h") from None
        value = math.inf if seconds is None else seconds
    if isinstance(value, int) and abs(value) >= KEEP_FOREVER_SECONDS:  # beyond a float (10**400) too
        return math.inf
    if math.isnan(value):
        raise ValueError("keep_alive is not a number")
    return math.inf if value < 0 or value >= KEEP_FOREVER_SECONDS else float(value)


KeepAlive = Annotated[float | None, BeforeValidator(keep_alive_seconds)]


# --- tools (OpenAI's shape, which Ollama takes too) ---


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDef(BaseModel):
    """``tools[].function``."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str = Field(default="", max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class ToolDef(BaseModel):
    """One of ``tools``: a function (the only kind)."""

    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``."""

    type: Literal["function"] = "function"
    function: dict[str, str]


def tool_set(tools: list[ToolDef] | None, choice: str | NamedToolChoice | None, parallel: bool,
             param: str = "tool_choice") -> ToolSet | None:
    """The engine's ToolSet for OpenAI's (or Ollama's) fields: None when no tool may be called."""
    name = _chosen(choice, param)
    if not tools:
        if choice not in (None, "none"):
            raise InvalidRequest("tool_choice needs tools.", param=param)
        return None
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Each tool needs its own name.", param="tools")
    if name is not None and name not in names:
        raise InvalidRequest(f"tool_choice names '{name}', which is not one of the tools.", param=param)
    if choice == "none":
        return None
    for i, tool in enumerate(tools):
        if tool.function.parameters.get("type", "object") != "object":
            raise InvalidRequest("A function's parameters must be a JSON schema of type object.",
                                 param=f"tools.{i}.function.parameters")
    return ToolSet(tuple(Tool(t.function.name, t.function.description, json.dumps(t.function.parameters))
                         for t in tools), choice="function" if name else "required" if choice == "required" else "auto",
                   parallel=parallel, function=name)


def _chosen(choice: str | NamedToolChoice | None, param: str) -> str | None:
    """The function a named tool_choice names (None for the other choices)."""
    if isinstance(choice, NamedToolChoice):
        if not choice.function.get("name"):
            raise InvalidRequest("tool_choice.function.name is required.", param=param)
        return choice.function["name"]
    if choice not in (None, "auto", "none", "required"):
        raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or a named function.", param=param)
    return None
