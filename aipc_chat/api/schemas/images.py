"""Request bodies of the image endpoints: OpenAI images and AUTOMATIC1111's txt2img."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from aipc_chat.api.schemas.common import KeepAlive
from aipc_chat.engines.contract import ImageParams

MAX_PROMPT_CHARS = 4000
SEED_MIN, SEED_MAX = -1, 2**32 - 1
SIZE_PATTERN = r"^\d{1,5}x\d{1,5}$"
# "WxH", as the OpenAI images API and /chat take it.
ImageSize = Annotated[str, Field(pattern=SIZE_PATTERN, description="WxH, e.g. 512x512")]


def parse_size(size: str) -> tuple[int, int]:
    """(width, height) of a validated "WxH"."""
    width, _, height = size.partition("x")
    return int(width), int(height)


class ImageGenerationRequest(BaseModel):
    """``POST /v1/images/generations`` (OpenAI), with OVMS's extension names."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=16)
    size: ImageSize = "512x512"
    response_format: Literal["url", "b64_json"] = "url"
    quality: str | None = None
    style: str | None = None
    user: str | None = Field(default=None, max_length=256)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int = Field(default=20, ge=1, le=500)
    guidance_scale: float = Field(default=7.5, ge=0, le=30)
    seed: int | None = Field(default=None, validation_alias=AliasChoices("seed", "rng_seed"), ge=SEED_MIN, le=SEED_MAX)
    keep_alive: KeepAlive = None  # as Ollama's: how long the image model stays loaded after this request

    def to_params(self) -> ImageParams:
        """The engine's parameters."""
        width, height = parse_size(self.size)
        return ImageParams(prompt=self.prompt, negative_prompt=self.negative_prompt, width=width, height=height,
                           steps=self.num_inference_steps, guidance_scale=self.guidance_scale, seed=self.seed,
                           n=self.n, keep_alive=self.keep_alive)


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img`` with AUTOMATIC1111's defaults; fields we do not use are ignored, as A1111 does."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(default=-1, ge=SEED_MIN, le=SEED_MAX)
    steps: int = Field(default=50, ge=1, le=500)
    cfg_scale: float = Field(default=7.0, ge=0, le=30)
    width: int = Field(default=512, ge=1, le=8192)
    height: int = Field(default=512, ge=1, le=8192)
    batch_size: int = Field(default=1, ge=1, le=16)
    n_iter: int = Field(default=1, ge=1, le=16)
    sampler_name: str | None = Field(default=None, max_length=64)
    sampler_index: str | None = Field(default=None, max_length=64)
    send_images: bool = True
    save_images: bool = False

    def to_params(self) -> ImageParams:
        """The engine's parameters."""
        sampler = self.sampler_name or self.sampler_index
        return ImageParams(prompt=self.prompt, negative_prompt=self.negative_prompt, width=self.width,
                           height=self.height, steps=self.steps, guidance_scale=self.cfg_scale,
                           seed=None if self.seed == -1 else self.seed, n=self.batch_size * self.n_iter,
                           sampler=sampler)
