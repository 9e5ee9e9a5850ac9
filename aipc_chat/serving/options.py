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
    """What a turn's picture may be: the engine's own limits (None before its engine is built) and the settings'."""

    render: RenderLimits | None
    max_steps: int
    max_n: int

    @property
    def samplers(self) -> tuple[str, ...] | None:
        """The samplers /chat may name (None: the engine cannot tell, a remote one); the model's own default too when
        it has an A1111 name."""
        if self.render is None or self.render.samplers is None:
            return None
        named = [self.render.default_sampler] if self.render.default_sampler in ALL_SAMPLERS else []
        return tuple(dict.fromkeys([*self.render.samplers, *named]))

    def sizes(self) -> list[str]:
        """Sizes to offer ("WxH"): squares, then portrait and landscape pairs of common aspects, all allowed."""
        r = self.render
        if r is None:
            return []
        if r.static_size is not None:
            return [f"{r.static_size[0]}x{r.static_size[1]}"]
        sides = [s for s in SIDES if r.size_step <= s <= r.max_size and s % r.size_step == 0]
        sizes = [(s, s) for s in sides]
        for a, b in ASPECTS:
            sizes += [pair for short in sides for long in sides if short * b == long * a
                      for pair in ((short, long), (long, short))]
        return [f"{w}x{h}" for w, h in sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh[0] < wh[1], wh))]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``GET /chat/options``'s ``image``)."""
        r, samplers = self.render, self.samplers
        return {
            "sizes": self.sizes(), "min_size": r and r.size_step, "max_size": r and r.max_size,
            "size_step": r and r.size_step, "native_size": r and r.native_size,
            "static_size": list(r.static_size) if r and r.static_size else None,
            "max_steps": self.max_steps, "default_steps": min(DEFAULT_STEPS, self.max_steps), "max_n": self.max_n,
            "samplers": list(samplers) if samplers is not None else None,
            "default_sampler": r and r.default_sampler, "guidance_scale": dict(GUIDANCE),
        }


def image_limits(engine: ImageEngineClient | None, settings: Settings) -> ImageLimits:
    """The engine's limits with the settings' bounds; with no engine yet (its model still on its way), only what the
    settings say."""
    return ImageLimits(engine.limits() if engine is not None else None, settings.image_max_steps,
                       settings.image_max_n)


def check_sampler(limits: ImageLimits, sampler: str | None) -> None:
    """Refuse (400) a sampler the image engine cannot run, before the turn starts; an engine that does not know
    its samplers (a remote one) is left to decide."""
    if sampler is None or limits.samplers is None or sampler in limits.samplers:
        return
    raise InvalidRequest(f"Unknown sampler '{sampler}' for this image model; use one of "
                         f"{', '.join(limits.samplers)}.", param="image_options.sampler")
