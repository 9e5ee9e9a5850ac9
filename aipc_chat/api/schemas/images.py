"""Request bodies of the image endpoints: OpenAI images and AUTOMATIC1111's txt2img."""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from aipc_chat.api.schemas.common import ImageSeed, KeepAlive
from aipc_chat.engines.contract import NATIVE_SIZE, ImageParams, split_sampler
from aipc_chat.errors import InvalidRequest, UnsupportedParameter
from aipc_chat.serving.params import IMAGE_SEED_MAX, RANDOM_SEED, resolve_seed

MAX_PROMPT_CHARS = 4000
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
    size: ImageSize | Literal["auto"] = "512x512"  # auto: the size the model was trained at
    response_format: Literal["url", "b64_json"] = "url"
    quality: str | None = None
    style: str | None = None
    user: str | None = Field(default=None, max_length=256)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    num_inference_steps: int = Field(default=20, ge=1, le=500)
    guidance_scale: float = Field(default=7.5, ge=0, le=30)
    seed: ImageSeed = Field(default=None, validation_alias=AliasChoices("seed", "rng_seed"))
    keep_alive: KeepAlive = None  # as Ollama's: how long the image model stays loaded after this request

    def to_params(self) -> ImageParams:
        """The engine's parameters."""
        width, height = (NATIVE_SIZE, NATIVE_SIZE) if self.size == "auto" else parse_size(self.size)
        return ImageParams(prompt=self.prompt, negative_prompt=self.negative_prompt, width=width, height=height,
                           steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                           seed=resolve_seed(self.seed, IMAGE_SEED_MAX),
                           n=self.n, keep_alive=self.keep_alive)


MAX_INIT_PIXELS = 4096 * 4096  # a bigger starting picture is refused before it is decoded (decompression bombs)


def decode_image(data: str | bytes, width: int, height: int, *, param: str) -> Any:
    """A starting picture (base64, a ``data:image/...;base64,`` URL, or raw bytes) as RGB at ``width x height``
    (resized as A1111's "just resize"); 400 naming ``param`` when it is not a picture."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        text = data.split(",", 1)[1] if data.startswith("data:") else data
        try:
            data = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidRequest("The starting image is not valid base64.", param=param) from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_INIT_PIXELS:
                raise InvalidRequest(f"The starting image is {image.width}x{image.height}; at most "
                                     f"{MAX_INIT_PIXELS} pixels.", param=param)
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest("The starting image is not a PNG, JPEG or WebP picture.", param=param) from None
    return rgb if rgb.size == (width, height) else rgb.resize((width, height), Image.Resampling.LANCZOS)


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img`` with AUTOMATIC1111's defaults; fields we do not use are ignored, as A1111 does."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: ImageSeed = RANDOM_SEED
    steps: int = Field(default=50, ge=1, le=500)
    cfg_scale: float = Field(default=7.0, ge=0, le=30)
    width: int = Field(default=512, ge=1, le=8192)
    height: int = Field(default=512, ge=1, le=8192)
    batch_size: int = Field(default=1, ge=1, le=16)
    n_iter: int = Field(default=1, ge=1, le=16)
    sampler_name: str | None = Field(default=None, max_length=64)
    sampler_index: str | None = Field(default=None, max_length=64)
    scheduler: str | None = Field(default=None, max_length=64)  # A1111 1.9+: the schedule apart from the sampler
    send_images: bool = True
    save_images: bool = False
    # A1111 switches every client sends, false by default: accepted off, refused on (not silently ignored)
    enable_hr: bool = False
    restore_faces: bool | None = False
    tiling: bool | None = False

    def to_params(self) -> ImageParams:
        """The engine's parameters (a sampler joined with its schedule, "DPM++ 2M Karras", is split)."""
        for switch, what in (("enable_hr", "Hires fix"), ("restore_faces", "Face restoration"),
                             ("tiling", "Tiling")):
            if getattr(self, switch):
                raise UnsupportedParameter(f"{what} ({switch}) is not supported here; send it false or leave it "
                                           "out.", param=switch)
        sampler, schedule = split_sampler(self.sampler_name or self.sampler_index, self.scheduler)
        return ImageParams(prompt=self.prompt, negative_prompt=self.negative_prompt, width=self.width,
                           height=self.height, steps=self.steps, guidance_scale=self.cfg_scale,
                           seed=resolve_seed(self.seed, IMAGE_SEED_MAX), n=self.batch_size * self.n_iter,
                           sampler=sampler, schedule=schedule)


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``: txt2img's fields and a starting picture; the many fields of A1111's we do not use
    (``resize_mode``, ``image_cfg_scale``, ``styles``, ``alwayson_scripts``, ...) are ignored, as A1111 ignores
    unknown ones."""

    init_images: list[str] = Field(min_length=1, max_length=1)
    denoising_strength: float = Field(default=0.75, ge=0, le=1)
    mask: str | None = None
    include_init_images: bool = False

    def to_params(self) -> ImageParams:
        """The engine's parameters, the starting picture decoded and sized."""
        if self.mask:
            raise UnsupportedParameter("Inpainting (a mask) is not supported; send init_images only.", param="mask")
        image = decode_image(self.init_images[0], self.width, self.height, param="init_images")
        return replace(super().to_params(), init_image=image, strength=self.denoising_strength)
