"""Request fields several APIs share."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BeforeValidator, Field

from aipc_chat.serving.params import IMAGE_SEED_MAX, LLM_SEED_MAX, RANDOM_SEED
from aipc_chat.settings import parse_duration

# -1 is "random" everywhere; the serving layer's ``seed`` turns it (and None) into None.
LLMSeed = Annotated[int | None, Field(ge=RANDOM_SEED, le=LLM_SEED_MAX)]
ImageSeed = Annotated[int | None, Field(ge=RANDOM_SEED, le=IMAGE_SEED_MAX)]


def keep_alive_seconds(value: object) -> float | None:
    """Ollama's ``keep_alive``: seconds (a number) or a duration (``30s``, ``5m``, ``1h``); negative keeps the model
    loaded for good (``math.inf``), 0 unloads it right after the request; None leaves the server's default."""
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
    if math.isnan(value):
        raise ValueError("keep_alive is not a number")
    return math.inf if value < 0 else float(value)


KeepAlive = Annotated[float | None, BeforeValidator(keep_alive_seconds)]
