"""Each API's request as generation parameters: every API's defaults in one table, and the one function that
fills what a request left out from it. A schema only renames its fields into ``Asked``; nothing else builds a
``GenParams`` from a request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aipc_chat.engines.contract import GenParams, TagConstraint, ToolSet

Api = Literal["openai_chat", "openai_completions", "ollama", "chat"]

LLM_SEED_MAX = 2**63 - 1  # openvino-genai's rng_seed is a size_t; the OpenAI and Ollama APIs take int64
IMAGE_SEED_MAX = 2**32 - 1  # A1111's range (numpy's RandomState takes no more)
RANDOM_SEED = -1  # Ollama's and A1111's "a new seed each time"


@dataclass(frozen=True)
class Defaults:
    """What one API does where a request is silent."""

    temperature: float
    top_p: float
    top_k: int | None = None  # None: off
    max_tokens: int | None = None  # None: until the reply ends or the context is full
    repetition_penalty: float = 1.0  # 1.0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    split_reasoning: bool = True  # False: all text is answer (a plain-prompt completion)
    constraint_param: str = "response_format"  # the field a refused output constraint is reported under


DEFAULTS: dict[Api, Defaults] = {
    # OpenAI's reference says temperature 1, top_p 1; the models served here reason, and their cards (DeepSeek-R1,
    # Qwen3 in thinking mode) ask for 0.6 / 0.95: hotter or greedy sampling makes them loop. Kept as it was.
    "openai_chat": Defaults(temperature=0.6, top_p=0.95),
    # OpenAI's API reference for /v1/completions: temperature 1, top_p 1, max_tokens 16.
    "openai_completions": Defaults(temperature=1.0, top_p=1.0, max_tokens=16, split_reasoning=False),
    # Ollama's DefaultOptions (api/types.go, docs/modelfile.md): temperature 0.8, top_p 0.9, top_k 40, num_predict
    # -1 (no limit). Its repeat_penalty 1.1 is left at 1.0 (off): Ollama's own Go sampler ignores it (ollama#15783),
    # and openvino-genai's penalises every token of prompt and reply, not llama.cpp's last 64.
    "ollama": Defaults(temperature=0.8, top_p=0.9, top_k=40, constraint_param="format"),
    # /chat (ours): the reasoning models' sampling, as OpenAI chat; its max_tokens is AIPC_CHAT_MAX_TOKENS, a
    # setting the orchestrator passes in.
    "chat": Defaults(temperature=0.6, top_p=0.95, constraint_param="image"),
}


@dataclass(frozen=True)
class Asked:
    """What a request asked for, in the engine's names; None where it was silent."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: Sequence[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    reasoning_budget: int | None = None
    json_schema: str | None = None
    tag: TagConstraint | None = None
    tools: ToolSet | None = None
    think: bool = True
    keep_alive: float | None = None


def resolve_seed(value: int | None, bound: int = LLM_SEED_MAX) -> int | None:
    """The seed to use: None (a new one each time) for None or -1; ValueError outside -1..``bound``."""
    if value is None or value == RANDOM_SEED:
        return None
    if not 0 <= value <= bound:
        raise ValueError(f"seed takes -1 (random) or 0 to {bound}")
    return value


def gen_params(api: Api, asked: Asked) -> GenParams:
    """``asked`` with ``api``'s defaults where it is silent. A zero that means "off" in every API is off here:
    top_k 0 (no top-k), top_p 0 (no nucleus), max_tokens 0 or below (Ollama's num_predict -1 and -2: no limit)."""
    d = DEFAULTS[api]

    def given(value: float | None, default: float) -> float:
        return default if value is None else value

    max_tokens = d.max_tokens if asked.max_tokens is None else asked.max_tokens
    top_k = d.top_k if asked.top_k is None else asked.top_k
    return GenParams(
        max_tokens=max_tokens if max_tokens is not None and max_tokens > 0 else None,
        temperature=given(asked.temperature, d.temperature),
        top_p=given(asked.top_p, d.top_p) or 1.0,
        top_k=top_k or None,
        seed=resolve_seed(asked.seed),
        stop=tuple(asked.stop or ()),
        presence_penalty=given(asked.presence_penalty, d.presence_penalty),
        frequency_penalty=given(asked.frequency_penalty, d.frequency_penalty),
        repetition_penalty=given(asked.repetition_penalty, d.repetition_penalty),
        ignore_eos=asked.ignore_eos,
        reasoning_budget=asked.reasoning_budget,
        json_schema=asked.json_schema,
        tag=asked.tag,
        tools=asked.tools,
        constraint_param=d.constraint_param,
        think=asked.think,
        split_reasoning=d.split_reasoning,
        keep_alive=asked.keep_alive,
    )
