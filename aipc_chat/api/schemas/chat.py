"""``POST /chat`` request body: the seed project's contract plus image options and streaming."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aipc_chat.api.schemas.common import ImageSeed, LLMSeed
from aipc_chat.api.schemas.images import ImageSize, parse_size
from aipc_chat.engines.contract import ALL_SAMPLERS, split_sampler
from aipc_chat.orchestrator import ChatTurnRequest, ImageOptions
from aipc_chat.serving.options import DEFAULT_STEPS, GUIDANCE
from aipc_chat.serving.params import IMAGE_SEED_MAX, resolve_seed

SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
MAX_MESSAGE_CHARS = 16_000


class ChatImageOptions(BaseModel):
    """How to render the picture, when there is one (the assistant writes its prompt)."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str | None = Field(default=None, max_length=2000)
    steps: int = Field(default=DEFAULT_STEPS, ge=1, le=500)
    guidance_scale: float = Field(default=GUIDANCE["default"], ge=GUIDANCE["min"], le=GUIDANCE["max"])
    seed: ImageSeed = None
    size: ImageSize = "512x512"
    sampler: str | None = Field(default=None, max_length=64, description=(
        "An A1111 sampler name as on /sdapi/v1/samplers (any case); none: the model's own."))

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        if value is None:
            return None
        sampler, schedule = split_sampler(value)  # A1111's spelling, matched in any case
        if sampler not in ALL_SAMPLERS or schedule is not None:  # a joined schedule ("... Karras") is not taken here
            raise ValueError(f"unknown sampler '{value}'; use one of {', '.join(ALL_SAMPLERS)}")
        return sampler


class ChatRequest(BaseModel):
    """One user message to the multimodal assistant."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=SAFE_ID, description="A short id of the user (letters, digits, _ . @ -).")
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    conversation_id: str = Field(default="default", pattern=SAFE_ID)
    image: Literal["auto", "always", "never"] = "auto"
    image_options: ChatImageOptions = Field(default_factory=ChatImageOptions)
    stream: bool = False
    wait_for_image: bool = Field(default=True, description="false: return at once with the job id and URLs.")
    max_tokens: int | None = Field(default=None, ge=16, le=131072)
    temperature: float | None = Field(default=None, ge=0, le=2, description="The answer's sampling temperature.")
    seed: LLMSeed = Field(default=None, description="Repeatable answers with a seed (-1: random).")

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be blank")
        return value

    def to_turn(self) -> ChatTurnRequest:
        """The orchestrator's request."""
        o = self.image_options
        width, height = parse_size(o.size)
        options = ImageOptions(negative_prompt=o.negative_prompt, steps=o.steps, guidance_scale=o.guidance_scale,
                               seed=resolve_seed(o.seed, IMAGE_SEED_MAX), width=width, height=height,
                               sampler=o.sampler)
        return ChatTurnRequest(user_id=self.user_id, message=self.message.strip(),
                               conversation_id=self.conversation_id, image=self.image, image_options=options,
                               wait_for_image=self.wait_for_image, max_tokens=self.max_tokens,
                               temperature=self.temperature, seed=self.seed)
