"""A1111 sampler names, joined with their schedule or apart."""

from __future__ import annotations

import pytest

from aipc_chat.engines.contract import split_sampler


@pytest.mark.parametrize(("name", "schedule", "expected"), [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "karras")),
    ("DPM++ 2M", "Karras", ("DPM++ 2M", "karras")),
    ("dpm++ 2m karras", "Automatic", ("DPM++ 2M", "karras")),
    ("Euler a", None, ("Euler a", None)),
    ("Euler Exponential", "automatic", ("Euler", "exponential")),
    ("DPM++ 2M Karras", "exponential", ("DPM++ 2M Karras", "exponential")),  # contradictory: the check refuses
    ("Heun", None, ("Heun", None)),
    (None, "karras", (None, "karras")),
])
def test_split(name: str | None, schedule: str | None, expected: tuple[str | None, str | None]) -> None:
    assert split_sampler(name, schedule) == expected
