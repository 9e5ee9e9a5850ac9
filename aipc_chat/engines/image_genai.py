"""openvino-genai's image runtime, the default: Stable Diffusion through ``Text2ImagePipeline`` and
``Image2ImagePipeline``, both made over one ``InpaintingPipeline`` so they share its compiled models (no second copy
of the weights). It needs nothing beyond openvino-genai: no torch, diffusers or optimum.

Seeds reproduce per seed through genai's CppStdGenerator (its TorchGenerator imports torch; same pixels). The step
callback drives progress, previews and stopping: a callback that returns True ends ``generate()`` with an empty
tensor, so the last latent it saw is kept and decoded for the picture so far.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc_chat.engines.contract import SAMPLERS, ImageJob, Interrupted
from aipc_chat.engines.image import (
    LocalRenderer,
    cheap_preview,
    image_ov_config,
    npu_static_size,
    step_action,
)
from aipc_chat.errors import InvalidRequest
from aipc_chat.settings import Settings


@dataclass(frozen=True)
class CompilePlan:
    """How the pipeline is compiled for a device: its properties and, on an NPU, the one static shape."""

    device: str
    properties: dict[str, str]
    static: tuple[int, int, float] | None = None  # (width, height, guidance scale) an NPU is reshaped to


def compile_plan(settings: Settings, device: str) -> CompilePlan:
    """The compile cache everywhere; on an NPU, static shapes (one picture at the configured size, with classifier-
    free guidance: the UNet's batch is doubled)."""
    size = npu_static_size(settings, device)
    static = (size[0], size[1], 7.5) if size is not None else None
    return CompilePlan(device, image_ov_config(settings), static)


class GenAIPipelines:
    """The pipelines one loaded model serves: text to image and, when the model has a VAE encoder, image to image,
    over the same compiled models."""

    def __init__(self, text2image: Any, image2image: Any) -> None:  # image2image None: no VAE encoder
        self.text2image, self.image2image = text2image, image2image

    def generate(self, prompt: str, *, image: Any = None, **kwargs: Any) -> Any:
        """Text to image, or image to image from ``image`` (an ov.Tensor, NHWC uint8)."""
        if image is None:
            return self.text2image.generate(prompt, **kwargs)
        return self.image2image.generate(prompt, image, **kwargs)

    def decode(self, latent: Any) -> Any:
        """Pictures (NHWC uint8) from a latent."""
        return self.text2image.decode(latent)

    def set_scheduler(self, scheduler: Any, *, image_to_image: bool) -> None:
        """Give one of the pipelines a scheduler."""
        (self.image2image if image_to_image else self.text2image).set_scheduler(scheduler)


class GenAIImagePipelines:
    """The genai runtime's pipeline factory: the model compiled for its device (static shapes on an NPU)."""

    def __init__(self, settings: Settings, model_dir: Path, device: str) -> None:
        self.model_dir = model_dir
        self.plan = compile_plan(settings, device)

    def __call__(self) -> GenAIPipelines:
        import openvino_genai as ov_genai

        plan = self.plan
        with_encoder = (self.model_dir / "vae_encoder" / "openvino_model.xml").is_file()
        cls = ov_genai.InpaintingPipeline if with_encoder else ov_genai.Text2ImagePipeline
        if plan.static is None:
            pipe = cls(str(self.model_dir), plan.device, **plan.properties)
        else:  # an NPU compiles static shapes only: reshape before compiling
            pipe = cls(str(self.model_dir))
            width, height, guidance = plan.static
            pipe.reshape(1, height, width, guidance)
            pipe.compile(plan.device, **plan.properties)
        if not with_encoder:
            return GenAIPipelines(pipe, None)
        return GenAIPipelines(ov_genai.Text2ImagePipeline(pipe), ov_genai.Image2ImagePipeline(pipe))


class GenAIRenderer(LocalRenderer):
    """Renders jobs with openvino-genai's image generation pipelines."""

    runtime = "genai"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._samplers: dict[bool, str] = {}  # the sampler each pipeline runs now (by image_to_image)
        self._derived: tempfile.TemporaryDirectory[str] | None = None  # scheduler configs written for genai

    def imports(self) -> None:
        """Import openvino-genai (before a load is measured: the library is not the model's cost)."""
        import openvino_genai  # noqa: F401

    def _install(self, pipe: Any) -> None:
        super()._install(pipe)
        self._samplers = {False: self.default_sampler, True: self.default_sampler}  # the model's own scheduler

    def _use_sampler(self, name: str, schedule: str, *, image_to_image: bool) -> None:
        """Give the job's pipeline the scheduler of this sampler (the model's own config, another type)."""
        import openvino_genai as ov_genai

        if image_to_image and self._pipe.image2image is None:
            raise InvalidRequest("This image model has no VAE encoder: image to image is not available.",
                                 param="init_images")
        if self._samplers[image_to_image] != name:
            # the model's own scheduler (any genai knows, by its config) or another of genai's by type
            kind = (ov_genai.Scheduler.Type.AUTO if name == self.default_sampler
                    else getattr(ov_genai.Scheduler.Type, SAMPLERS["genai"][name]))
            config = self._scheduler_config(unclipped=name == "DDIM")
            self._pipe.set_scheduler(ov_genai.Scheduler.from_config(str(config), kind), image_to_image=image_to_image)
            self._samplers[image_to_image] = name
        self.sampler = name

    def _scheduler_config(self, *, unclipped: bool) -> Path:
        """The model's scheduler config; for DDIM with ``clip_sample`` off where the config leaves it to the
        default (genai's DDIM refuses clipping; SD 1.5's own config turns it off, and so does A1111's DDIM)."""
        path = self.model_dir / "scheduler" / "scheduler_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        if not unclipped or config.get("clip_sample") is False:
            return path
        if self._derived is None:
            self._derived = tempfile.TemporaryDirectory(prefix="aipc-scheduler-")
        derived = Path(self._derived.name) / "scheduler_config.json"
        derived.write_text(json.dumps({**config, "clip_sample": False}), encoding="utf-8")
        return derived

    def _render_one(self, job: ImageJob, seed: int, *, done_before: int) -> Any:
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai
        from PIL import Image

        p = job.params
        last: list[Any] = []  # the latest latent the callback saw (copied: the runtime reuses its buffer)
        action: list[str] = ["go"]

        def on_step(step: int, num_steps: int, latent: Any) -> bool:
            action[0] = step_action(job, done_before, step, num_steps)
            if action[0] == "abort":
                return True
            last[:] = [np.array(latent.data, copy=True)]
            if action[0] == "go":
                job.set_preview(cheap_preview(last[0]), job.step)
            return action[0] == "stop"

        extra: dict[str, Any] = {"width": p.width, "height": p.height}
        if p.init_image is not None:
            pixels = np.asarray(p.init_image.convert("RGB"), dtype=np.uint8)[None]
            extra = {"image": ov.Tensor(pixels), "strength": p.strength}
        if p.negative_prompt and p.guidance_scale > 1:  # genai takes one only with classifier-free guidance
            extra["negative_prompt"] = p.negative_prompt
        out = self._pipe.generate(
            p.prompt, num_inference_steps=p.steps, guidance_scale=p.guidance_scale,
            generator=ov_genai.CppStdGenerator(seed), callback=on_step, **extra)
        if action[0] == "abort":
            raise Interrupted  # given up outright: no decode
        if action[0] == "stop":  # the callback kept the latent it stopped at
            out = self._pipe.decode(ov.Tensor(last[0]))
        return Image.fromarray(np.array(out.data)[0], "RGB")
