"""What the served image model accepts, for a client to build its controls from (``GET /chat/options``), and the
check of a chat's sampler against it before a turn starts.

The limits are the image engine's own (``ImageEngineClient.limits``: what it checks each job against), never read
from a pipeline: they are known once the engine is built, before its model loads. A remote engine does not know its
samplers: those are None, and the remote decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aipc_chat.engines.contract import ALL_SAMPLERS, ImageEngineClient, RenderLimits
from aipc_chat.errors import InvalidRequest
from aipc_chat.settings import Settings

# The chat's image options, as the /chat schema bounds them (api/schemas/chat.py): guidance and the defaults.
GUIDANCE = {"min": 0.0, "max": 30.0, "default": 7.5}
DEFAULT_STEPS = 20
# Sides offered as sizes (each a multiple of the model's step up to its largest size), squares and these aspects.
SIDES = (256, 384, 512, 640, 768, 1024)
ASPECTS = ((2, 3), (3, 4), (1, 2))


@dataclass(frozen=True)
class ImageLimits:
    """What one image engine accepts; None where it is not known (a remote renderer, a model not yet read)."""

    max_size: int | None
    size_step: int | None
    native_size: int | None
    static_size: tuple[int, int] | None  # an NPU pipeline compiled for one size
    samplers: tuple[str, ...] | None
    default_sampler: str | None
    max_steps: int
    max_n: int

    def sizes(self) -> list[str]:
        """Sizes to offer ("WxH"): squares, then portrait and landscape pairs of common aspects, all allowed."""
        if self.static_size is not None:
            return [f"{self.static_size[0]}x{self.static_size[1]}"]
        if self.max_size is None or self.size_step is None:
            return []
        step, biggest = self.size_step, self.max_size
        sides = [s for s in SIDES if step <= s <= biggest and s % step == 0]
        sizes = [(s, s) for s in sides]
        for a, b in ASPECTS:
            sizes += [pair for short in sides for long in sides if short * b == long * a
                      for pair in ((short, long), (long, short))]
        return [f"{w}x{h}" for w, h in sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh[0] < wh[1], wh))]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``GET /chat/options``'s ``image``)."""
        return {
            "sizes": self.sizes(), "min_size": self.size_step, "max_size": self.max_size, "size_step": self.size_step,
            "native_size": self.native_size, "static_size": list(self.static_size) if self.static_size else None,
            "max_steps": self.max_steps, "default_steps": min(DEFAULT_STEPS, self.max_steps), "max_n": self.max_n,
            "samplers": list(self.samplers) if self.samplers is not None else None,
            "default_sampler": self.default_sampler, "guidance_scale": dict(GUIDANCE),
        }


def image_limits(engine: ImageEngineClient | None, settings: Settings) -> ImageLimits:
    """The engine's limits with the settings' bounds; with no engine yet (its model still on its way), only what the
    settings say."""
    known: RenderLimits | None = engine.limits() if engine is not None else None
    samplers = None
    if known is not None and known.samplers is not None:  # the model's own default only when /chat can name it
        named = [known.default_sampler] if known.default_sampler in ALL_SAMPLERS else []
        samplers = tuple(dict.fromkeys([*known.samplers, *named]))
    return ImageLimits(
        max_size=known.max_size if known else None, size_step=known.size_step if known else None,
        native_size=known.native_size if known else None, static_size=known.static_size if known else None,
        samplers=samplers, default_sampler=known.default_sampler if known else None,
        max_steps=settings.image_max_steps, max_n=settings.image_max_n)


def check_sampler(limits: ImageLimits, sampler: str | None) -> None:
    """Refuse (400) a sampler the image engine cannot run, before the turn starts; an engine that does not know
    its samplers (a remote one) is left to decide."""
    if sampler is None or limits.samplers is None or sampler in limits.samplers:
        return
    raise InvalidRequest(f"Unknown sampler '{sampler}' for this image model; use one of "
                         f"{', '.join(limits.samplers)}.", param="image_options.sampler")
