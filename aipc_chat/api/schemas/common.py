"""Request fields several APIs share."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BeforeValidator

from aipc_chat.settings import parse_duration


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
