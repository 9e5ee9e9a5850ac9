"""The image APIs on a live demo server: the openai client, and /sdapi/v1 as Open WebUI calls it."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import openai
import pytest
from PIL import Image

from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def base_url(image_base_url: str) -> str:
    """Every test here runs on both image runtimes (openvino-genai, optimum-intel)."""
    return image_base_url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img


def test_openai_b64_json(client: openai.OpenAI) -> None:
    r = client.images.generate(prompt="a lighthouse", size="64x64", response_format="b64_json",
                               extra_body={"num_inference_steps": 2, "seed": 5})
    assert r.data and r.data[0].b64_json
    img = png(base64.b64decode(r.data[0].b64_json))
    assert img.size == (64, 64) and "Seed: 5" in img.text["parameters"]


def test_openai_url_serves_the_same_png(client: openai.OpenAI, base_url: str) -> None:
    r = client.images.generate(prompt="a fox", size="128x64", response_format="url", n=2,
                               extra_body={"num_inference_steps": 2, "seed": 9})
    assert len(r.data) == 2
    urls = [d.url for d in r.data]
    assert all(u and u.startswith(base_url + "/images/") for u in urls)
    got = [httpx.get(str(u)) for u in urls]
    assert [g.status_code for g in got] == [200, 200]
    assert got[0].headers["content-type"] == "image/png"
    assert png(got[0].content).size == (128, 64)
    b64 = client.images.generate(prompt="a fox", size="128x64", response_format="b64_json",
                                 extra_body={"num_inference_steps": 2, "seed": 9})
    assert png(base64.b64decode(b64.data[0].b64_json or "")).tobytes() == png(got[0].content).tobytes()


def test_unknown_and_malicious_image_names_are_404(base_url: str) -> None:
    for name in ("0" * 32 + ".png", "..%2F..%2Fetc%2Fpasswd", "../README.md", "x.png"):
        r = httpx.get(f"{base_url}/images/{name}")
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found_error"


def txt2img(base_url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{base_url}/sdapi/v1/txt2img", json=body, timeout=120)


def test_txt2img_as_open_webui_sends_it(base_url: str) -> None:
    auth = {"authorization": "Basic dXNlcjpwYXNz"}
    assert httpx.get(f"{base_url}/sdapi/v1/options", headers=auth).json()["sd_model_checkpoint"]
    models = httpx.get(f"{base_url}/sdapi/v1/sd-models", headers=auth).json()
    assert models[0]["model_name"] == "aipc-demo-sd15" and models[0]["title"]
    r = httpx.post(f"{base_url}/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]}, headers=auth)
    assert r.status_code == 200
    r = httpx.post(f"{base_url}/sdapi/v1/txt2img", headers=auth, timeout=120, json={
        "prompt": "a cat", "batch_size": 1, "width": 64, "height": 64, "steps": 2, "negative_prompt": "dog",
        "cfg_scale": 7, "sampler_name": "Euler a", "hr_scale": 2, "alwayson_scripts": {}})
    assert r.status_code == 200
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 and info["seed"] == info["all_seeds"][0]
    assert (info["prompt"], info["width"], info["height"]) == ("a cat", 64, 64)
    text = png(base64.b64decode(body["images"][0])).text["parameters"]
    assert text.startswith("a cat\nNegative prompt: dog\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: ")


def test_txt2img_seeds(base_url: str) -> None:
    def pixels(seed: int) -> bytes:
        r = txt2img(base_url, prompt="hills", seed=seed, steps=2, width=64, height=64)
        return png(base64.b64decode(r.json()["images"][0])).tobytes()

    assert pixels(42) == pixels(42)
    assert pixels(42) != pixels(43)
    r = txt2img(base_url, prompt="hills", steps=1, width=64, height=64, batch_size=2)
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 2 and info["all_seeds"][1] == info["all_seeds"][0] + 1


def test_progress_and_interrupt_of_a_running_job(base_url: str) -> None:
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: result.update(r=txt2img(
        base_url, prompt="slow", steps=100, width=512, height=512, seed=1)))
    worker.start()
    seen = 0.0

    def under_way() -> bool:
        nonlocal seen
        p = httpx.get(f"{base_url}/sdapi/v1/progress").json()
        seen = max(seen, p["progress"])
        return "r" in result or 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 100

    wait_until(under_way, "the job under way")
    assert 0 < seen < 1
    assert httpx.post(f"{base_url}/sdapi/v1/interrupt").status_code == 200
    worker.join(60)
    r = result["r"]
    assert r.status_code == 200, r.text  # as A1111: the picture as far as it got
    assert len(r.json()["images"]) == 1 and json.loads(r.json()["info"])["interrupted"] is True
    assert httpx.post(f"{base_url}/sdapi/v1/interrupt").status_code == 200  # idle: still 200
    assert httpx.get(f"{base_url}/sdapi/v1/progress").json()["progress"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "width": 100, "height": 64, "steps": 2},
        {"prompt": "x", "width": 64, "height": 1024, "steps": 2},
        {"prompt": "x", "width": 64, "height": 64, "steps": 0},
        {"prompt": "x", "width": 64, "height": 64, "steps": 100000},
        {"prompt": "x", "width": 64, "height": 64, "batch_size": 100},
        {"prompt": "x", "width": 64, "height": 64, "sampler_name": "nope"},
        {"prompt": "x", "width": "wide"},
    ],
)
def test_bad_txt2img_is_4xx(base_url: str, body: dict[str, object]) -> None:
    r = txt2img(base_url, **body)
    assert 400 <= r.status_code < 500
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("size", ["64", "0x0", "64x100", "4096x4096"])
def test_bad_openai_sizes_are_400(client: openai.OpenAI, size: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", size=size, extra_body={"num_inference_steps": 1})  # type: ignore[arg-type]


def test_job_status_endpoint(base_url: str) -> None:
    r = httpx.get(f"{base_url}/v1/images/jobs/doesnotexist")
    assert r.status_code == 404


def test_size_auto_is_the_models_own(client: openai.OpenAI) -> None:
    picture = client.images.generate(prompt="a red cube", size="auto", response_format="b64_json",
                                     extra_body={"num_inference_steps": 1})
    assert picture.data and picture.data[0].b64_json is not None
    image = Image.open(io.BytesIO(base64.b64decode(picture.data[0].b64_json)))
    assert image.size == (512, 512)  # the demo SD 1.5's UNet, 64 latents x 8
