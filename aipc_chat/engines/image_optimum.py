"""optimum-intel's image runtime (``AIPC_IMAGE_RUNTIME=optimum``, the ``[optimum]`` extra): Stable Diffusion's
OpenVINO models driven from Python by diffusers' pipeline code, for diffusers' extra samplers (DPM++ and friends)
and sigma schedules. The default runtime is openvino-genai (``image_genai.py``); both render the same jobs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from aipc_chat.engines.contract import SAMPLERS, SCHEDULES, Flagged, ImageJob, Interrupted
from aipc_chat.engines.image import (
    SAMPLER_OF_CLASS,
    LocalRenderer,
    cheap_preview,
    image_ov_config,
    npu_static_size,
    step_action,
)
from aipc_chat.errors import InvalidRequest
from aipc_chat.settings import Settings


def size_step(pipe: Any) -> int:
    """The size multiple the pipeline needs: VAE scale factor x the UNet's downsampling."""
    vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
    blocks = pipe.unet.config.get("block_out_channels") if hasattr(pipe.unet, "config") else None
    unet_factor = 2 ** (len(blocks) - 1) if blocks else 8
    return vae_factor * unet_factor


def schedule_applies(sampler: str, schedule: str) -> bool:
    """Whether a sampler's diffusers scheduler takes this schedule's option."""
    import importlib

    options = SCHEDULES.get(schedule)
    if options is None or sampler not in SAMPLERS["optimum"]:
        return False
    if not options:
        return True
    cls = getattr(importlib.import_module("diffusers"), SAMPLERS["optimum"][sampler])
    return all(name in inspect.signature(cls.__init__).parameters for name in options)


class OptimumImagePipelines:
    """The optimum runtime's pipeline factory: the SD pipeline compiled for its device (static shapes on NPU)."""

    def __init__(self, settings: Settings, model_dir: Path, device: str) -> None:
        self.settings, self.model_dir, self.device = settings, model_dir, device
        self.static_size = npu_static_size(settings, device)

    def __call__(self) -> Any:
        from optimum.intel import OVStableDiffusionPipeline

        pipe = OVStableDiffusionPipeline.from_pretrained(
            str(self.model_dir), device=self.device, ov_config=image_ov_config(self.settings),
            compile=self.static_size is None)
        pipe.set_progress_bar_config(disable=True)  # progress goes to jobs and the log, not a tqdm bar
        if self.static_size is not None:  # NPU compiles static shapes only
            width, height = self.static_size
            pipe.reshape(batch_size=1, height=height, width=width, num_images_per_prompt=1)
            pipe.compile()
        return pipe


class OptimumRenderer(LocalRenderer):
    """Renders jobs with an optimum-intel Stable Diffusion pipeline."""

    runtime = "optimum"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._img2img: Any = None
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._current: Any = None  # the pipeline this job runs on (text or image to image)

    def imports(self) -> None:
        """Import the libraries the pipeline needs (before a load is measured: they are not the model's cost)."""
        import optimum.intel  # noqa: F401
        import torch  # noqa: F401

    def unload(self) -> None:
        """Let the pipelines go (the next job loads them again)."""
        self._img2img, self._schedulers, self._current = None, {}, None
        super().unload()

    def _install(self, pipe: Any) -> None:
        self._img2img = None
        self.step_multiple = size_step(pipe)
        self.default_sampler = SAMPLER_OF_CLASS.get(type(pipe.scheduler).__name__, type(pipe.scheduler).__name__)
        super()._install(pipe)
        self._schedulers = {(self.sampler, "automatic"): pipe.scheduler}

    def _check_schedule(self, sampler: str, schedule: str) -> None:
        if schedule != "automatic" and not schedule_applies(sampler, schedule):
            raise InvalidRequest(f"The {sampler} sampler has no {schedule} schedule; use it with "
                                 f"{', '.join(s for s in SCHEDULES if schedule_applies(sampler, s))}.",
                                 param="scheduler")

    def _use_sampler(self, name: str, schedule: str, *, image_to_image: bool) -> None:
        """Give this job's pipeline its scheduler (it runs in Python: any diffusers scheduler suits the OpenVINO
        models); made once per sampler and schedule."""
        self._current = self._image_to_image() if image_to_image else self._pipe
        key = (name, schedule)
        if key not in self._schedulers:
            import diffusers

            cls = getattr(diffusers, SAMPLERS["optimum"][name])
            self._schedulers[key] = cls.from_config(self._schedulers[(self.default_sampler, "automatic")].config,
                                                    **SCHEDULES[schedule])
        self._current.scheduler = self._schedulers[key]
        self.sampler = name if schedule == "automatic" else f"{name} {schedule.capitalize()}"

    def _render_one(self, job: ImageJob, seed: int, *, done_before: int) -> Any:
        import torch

        p = job.params

        def on_step(pipe: Any, i: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            action = step_action(job, done_before, i, pipe.num_timesteps)
            if action == "abort":
                raise Interrupted  # unlike stopping the pipeline, this also skips the VAE decode
            if action == "stop":
                pipe._interrupt = True  # diffusers skips the remaining steps and decodes what it has
            elif "latents" in kwargs:
                job.set_preview(cheap_preview(kwargs["latents"]), job.step)
            return kwargs

        size = {"width": p.width, "height": p.height} if p.init_image is None else {
            "image": p.init_image, "strength": p.strength}
        result = self._current(
            prompt=p.prompt, negative_prompt=p.negative_prompt or None, num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale, generator=torch.Generator(device="cpu").manual_seed(seed),
            callback_on_step_end=on_step, **size,
        )
        flagged = getattr(result, "nsfw_content_detected", None)  # set when the model folder ships a checker
        if flagged and flagged[0]:
            raise Flagged
        return result.images[0]

    def _image_to_image(self) -> Any:
        """optimum-intel's image-to-image pipeline over the loaded one's components (the same compiled models: no
        second copy of the weights); made once per loaded pipeline."""
        if self._img2img is None:
            from optimum.intel import OVStableDiffusionImg2ImgPipeline

            pipe = object.__new__(OVStableDiffusionImg2ImgPipeline)
            pipe.__dict__.update(self._pipe.__dict__)
            if getattr(pipe, "vae_encoder", None) is None:
                raise InvalidRequest("This image model has no VAE encoder: image to image is not available.",
                                     param="init_images")
            self._img2img = pipe
        return self._img2img
