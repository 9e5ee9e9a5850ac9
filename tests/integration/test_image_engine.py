"""The image engine on the demo SD 1.5 pipeline, through each image runtime (openvino-genai and optimum-intel)."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from aipc_chat.engines.contract import ImageJob, ImageParams
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.errors import Cancelled, InvalidRequest
from aipc_chat.serving.aio import wait_job
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def generate(engine: ImageEngine, params: ImageParams) -> ImageJob:
    job = engine.submit(params)
    asyncio.run(wait_job(job, 120))
    return job


def pixels(engine: ImageEngine, name: str) -> bytes:
    data = engine.store.read(name)
    assert data is not None
    return Image.open(io.BytesIO(data)).tobytes()


def test_seeded_generation_is_reproducible(image_engine: ImageEngine) -> None:
    params = ImageParams(prompt="a red fox", width=64, height=64, steps=2, seed=1234)
    a, b = generate(image_engine, params), generate(image_engine, params)
    c = generate(image_engine, ImageParams(prompt="a red fox", width=64, height=64, steps=2, seed=1235))
    assert a.seeds == [1234] and a.state == "done" and a.step == 2
    assert pixels(image_engine, a.images[0]) == pixels(image_engine, b.images[0])
    assert pixels(image_engine, a.images[0]) != pixels(image_engine, c.images[0])


def test_png_carries_a1111_parameters(image_engine: ImageEngine) -> None:
    job = generate(image_engine, ImageParams(prompt="a lighthouse, dusk", negative_prompt="blurry", width=128,
                                             height=64, steps=2, guidance_scale=6.5, seed=7))
    data = image_engine.store.read(job.images[0])
    assert data is not None
    img = Image.open(io.BytesIO(data))
    assert img.size == (128, 64)
    assert img.text["parameters"] == (
        "a lighthouse, dusk\nNegative prompt: blurry\n"
        "Steps: 2, Sampler: PLMS, CFG scale: 6.5, Seed: 7, Size: 128x64, Model: demo-sd")


def test_random_seed_is_reported_and_n_images_get_consecutive_seeds(image_engine: ImageEngine) -> None:
    job = generate(image_engine, ImageParams(prompt="x", width=64, height=64, steps=1, n=2))
    assert len(job.images) == 2 and job.seeds[1] == job.seeds[0] + 1


def test_sampler_can_be_switched(image_engine: ImageEngine) -> None:
    job = generate(image_engine, ImageParams(prompt="x", width=64, height=64, steps=2, seed=3, sampler="Euler a"))
    data = image_engine.store.read(job.images[0])
    assert data is not None and b"Sampler: Euler a" in data


def test_cancel_stops_a_running_job(image_engine: ImageEngine) -> None:
    job = image_engine.submit(ImageParams(prompt="x", width=512, height=512, steps=100, seed=1))
    wait_until(lambda: job.step >= 2, "two steps")
    assert job.state == "running"
    job.cancel()
    with pytest.raises(Cancelled):
        asyncio.run(wait_job(job, 60))
    assert job.state == "cancelled" and job.step < 100 and not job.images


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (ImageParams(prompt="x", width=100, height=64), "width"),
        (ImageParams(prompt="x", width=64, height=576), "height"),
        (ImageParams(prompt="x", width=0, height=64), "width"),
        (ImageParams(prompt="x", width=64, height=64, steps=10_000), "steps"),
        (ImageParams(prompt="x", width=64, height=64, n=100), "n"),
        (ImageParams(prompt="x", width=64, height=64, sampler="Heun++"), "sampler_name"),
    ],
)
def test_bad_parameters_are_refused(image_engine: ImageEngine, params: ImageParams, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        image_engine.submit(params)
    assert info.value.param == param


def test_size_step_is_derived_from_the_model(image_engine: ImageEngine) -> None:
    assert image_engine.renderer.step_multiple == 64


def test_image_to_image_runs_on_the_loaded_models(image_engine: ImageEngine) -> None:
    import psutil

    renderer = image_engine.renderer
    red = Image.new("RGB", (64, 64), (200, 30, 30))
    rss = psutil.Process().memory_info().rss
    job = generate(image_engine, ImageParams(prompt="x", width=64, height=64, steps=4, seed=3, init_image=red,
                                             strength=0.5))
    assert job.state == "done" and b"Denoising strength: 0.5" in (image_engine.store.read(job.images[0]) or b"")
    if image_engine.settings.image_runtime == "optimum":
        pipe, img2img = renderer._pipe, renderer._img2img  # type: ignore[attr-defined]
        assert img2img is not None and type(img2img).__name__ == "OVStableDiffusionImg2ImgPipeline"
        assert img2img.unet is pipe.unet and img2img.vae_encoder is pipe.vae_encoder  # the same compiled models
    else:  # genai: both pipelines are made over one InpaintingPipeline at load
        assert type(renderer._pipe.image2image).__name__ == "Image2ImagePipeline"  # type: ignore[attr-defined]
    assert psutil.Process().memory_info().rss - rss < 64 * 2**20  # no second copy of the weights
    fresh = generate(image_engine, ImageParams(prompt="x", width=64, height=64, steps=4, seed=3))
    assert pixels(image_engine, fresh.images[0]) != pixels(image_engine, job.images[0])  # text to image again


def test_a_preview_follows_the_steps(image_engine: ImageEngine) -> None:
    job = generate(image_engine, ImageParams(prompt="x", width=128, height=64, steps=6, seed=3))
    assert job.preview is not None and job.preview_step == 6
    assert Image.open(io.BytesIO(job.preview)).size == (16, 8)  # the latents' size


def test_interrupt_keeps_the_picture_so_far(image_engine: ImageEngine) -> None:
    job = image_engine.submit(ImageParams(prompt="x", width=512, height=512, steps=100, seed=1, n=2))
    wait_until(lambda: job.step >= 2, "two steps")
    image_engine.interrupt()
    with pytest.raises(Cancelled):
        asyncio.run(wait_job(job, 60))
    assert job.state == "cancelled" and job.step < 100 and len(job.images) == 1  # not the second picture
    assert Image.open(io.BytesIO(image_engine.store.read(job.images[0]) or b"")).size == (512, 512)


@pytest.mark.parametrize(("sampler", "schedule", "runtimes"), [
    ("DPM++ 2M", "karras", {"optimum"}), ("Euler", "exponential", {"optimum"}), ("PLMS", "karras", set()),
    ("Euler", "sgm_uniform", set()), ("Euler a", "automatic", {"genai", "optimum"}),
    ("LCM", "automatic", {"genai", "optimum"}), ("DDIM", "automatic", {"genai", "optimum"}),
    ("LMS", "automatic", {"optimum"})])
def test_schedules(image_engine: ImageEngine, sampler: str, schedule: str, runtimes: set[str]) -> None:
    params = ImageParams(prompt="x", width=64, height=64, steps=3, seed=3, sampler=sampler, schedule=schedule)
    if image_engine.settings.image_runtime not in runtimes:
        with pytest.raises(InvalidRequest) as refused:
            image_engine.submit(params)
        assert refused.value.param in ("scheduler", "sampler_name")
        if runtimes:  # the other runtime has it: the error says so, and lists what this one has
            listed = "automatic" if refused.value.param == "scheduler" else "Euler a"
            assert "AIPC_IMAGE_RUNTIME=optimum" in refused.value.message and listed in refused.value.message
        return
    job = generate(image_engine, params)
    name = sampler if schedule == "automatic" else f"{sampler} {schedule.capitalize()}"
    assert f"Sampler: {name}," in (image_engine.store.read(job.images[0]) or b"").decode(
        "latin-1")
