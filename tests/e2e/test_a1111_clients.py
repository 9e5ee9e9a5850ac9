"""AUTOMATIC1111 clients with ``webuiapi`` (and the openai client's images.edit): image to image, an interrupt that
answers with the picture as far as it got, skip, progress with a preview, samplers joined with their schedule or
apart, and the read endpoints clients call first."""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

import httpx
import openai
import pytest
import webuiapi
from PIL import Image

from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def base_url(image_base_url: str) -> str:
    """Every test here runs on both image runtimes (openvino-genai, optimum-intel)."""
    return image_base_url
RED = Image.new("RGB", (64, 64), (200, 30, 30))


@pytest.fixture
def api(base_url: str) -> webuiapi.WebUIApi:
    host, port = base_url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def test_img2img(api: webuiapi.WebUIApi) -> None:
    result = api.img2img(images=[RED], prompt="a red cube", width=64, height=64, steps=4, denoising_strength=0.5,
                         seed=7, cfg_scale=7)
    assert result.image.size == (64, 64) and result.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in result.image.info["parameters"] and "Seed: 7" in result.info["infotexts"][0]
    again = api.img2img(images=[RED], prompt="a red cube", width=64, height=64, steps=4, denoising_strength=0.5,
                        seed=7, cfg_scale=7)
    assert again.image.tobytes() == result.image.tobytes()  # the same seed and picture, the same result
    other = api.img2img(images=[Image.new("RGB", (64, 64), (20, 30, 220))], prompt="a red cube", width=64,
                        height=64, steps=4, denoising_strength=0.5, seed=7, cfg_scale=7)
    assert other.image.tobytes() != result.image.tobytes()  # the starting picture matters


def test_img2img_refuses_what_it_cannot_use(base_url: str) -> None:
    body: dict[str, Any] = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    for init, param in (([], "init_images"), (["not base64!"], "init_images"),
                        ([base64.b64encode(b"not a picture").decode()], "init_images")):
        r = httpx.post(f"{base_url}/sdapi/v1/img2img", json={**body, "init_images": init}, timeout=30)
        assert r.status_code == 400 and param in str(r.json()["error"]["param"]), r.text
    png = io.BytesIO()
    RED.save(png, format="PNG")
    data = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    r = httpx.post(f"{base_url}/sdapi/v1/img2img", json={**body, "init_images": [data], "mask": data}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"


def long_job(api: webuiapi.WebUIApi, out: dict[str, Any], **extra: Any) -> threading.Thread:
    def run() -> None:
        out["result"] = api.txt2img(prompt="a slow picture", width=512, height=512, steps=100, seed=5, **extra)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_progress(base_url: str, at_least: float) -> dict[str, Any]:
    def progressed() -> dict[str, Any] | None:
        progress = httpx.get(f"{base_url}/sdapi/v1/progress").json()
        return dict(progress) if progress["progress"] >= at_least and progress["current_image"] else None

    return wait_until(progressed, f"progress {at_least} with a preview")


def test_interrupt_answers_with_the_picture_so_far_and_progress_has_a_preview(api: webuiapi.WebUIApi,
                                                                               base_url: str) -> None:
    out: dict[str, Any] = {}
    thread = long_job(api, out)
    progress = wait_progress(base_url, 0.05)
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.size == (64, 64) and preview.mode == "RGB"  # latent size: 1/8 of 512
    later = wait_progress(base_url, progress["progress"] + 0.05)
    assert later["current_image"] != progress["current_image"]  # refreshed as the steps go
    job = httpx.get(f"{base_url}/v1/images/jobs/{later['state']['job']}").json()  # the same preview, by job
    assert job["state"] == "running" and job["preview"] and job["preview_step"] >= 1
    api.interrupt()
    thread.join(60)
    result = out["result"]
    assert result.info["interrupted"] is True and len(result.images) == 1  # webuiapi's result.image works
    assert result.image.size == (512, 512)
    steps_done = int(result.info["infotexts"][0].split("Steps: ")[1].split(",")[0])
    assert 1 <= steps_done < 100, result.info["infotexts"][0]  # the steps it got to, not the 100 asked for
    assert f"Steps: {steps_done}," in result.image.info["parameters"]
    assert httpx.get(f"{base_url}/sdapi/v1/progress").json()["current_image"] is None  # idle again


def test_skip_ends_the_current_picture_and_goes_on(api: webuiapi.WebUIApi, base_url: str) -> None:
    out: dict[str, Any] = {}
    thread = long_job(api, out, batch_size=2)
    wait_progress(base_url, 0.02)
    api.skip()
    # The second picture got under way (its steps are the job's second half), and is skipped too (so the test
    # never waits out 100 steps at 512 px on a busy machine): the job ends with both pictures, not interrupted.
    wait_progress(base_url, 0.505)
    api.skip()
    thread.join()
    result = out["result"]
    assert len(result.images) == 2 and result.info["interrupted"] is False


def test_samplers_joined_or_apart(api: webuiapi.WebUIApi, base_url: str, request: pytest.FixtureRequest) -> None:
    if "genai" in request.node.callspec.id:  # genai has no sigma schedules: a clear 400 that says where they are
        r = httpx.post(f"{base_url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                                              "sampler_name": "DPM++ 2M Karras"})
        assert r.status_code == 400 and "AIPC_IMAGE_RUNTIME=optimum" in r.json()["error"]["message"]
        names = [s["name"] for s in httpx.get(f"{base_url}/sdapi/v1/samplers").json()]
        assert "Euler a" in names and "DPM++ 2M" not in names
        euler = api.txt2img(prompt="x", width=64, height=64, steps=3, seed=1, sampler_name="Euler a",
                            scheduler="automatic")
        assert euler.info["sampler_name"] == "Euler a"
        return
    joined = api.txt2img(prompt="x", width=64, height=64, steps=3, seed=1, sampler_name="DPM++ 2M Karras")
    apart = api.txt2img(prompt="x", width=64, height=64, steps=3, seed=1, sampler_name="DPM++ 2M",
                        scheduler="Karras")
    plain = api.txt2img(prompt="x", width=64, height=64, steps=3, seed=1, sampler_name="DPM++ 2M",
                        scheduler="automatic")
    assert joined.info["sampler_name"] == apart.info["sampler_name"] == "DPM++ 2M Karras"
    assert joined.image.tobytes() == apart.image.tobytes() != plain.image.tobytes()
    r = httpx.post(f"{base_url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                                          "sampler_name": "PLMS", "scheduler": "karras"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scheduler"
    names = [s["name"] for s in httpx.get(f"{base_url}/sdapi/v1/schedulers").json()]
    assert names[0] == "automatic" and "karras" in names


@pytest.mark.parametrize(("path", "expected"), [("sd-vae", []), ("loras", []), ("upscalers", []),
                                                ("embeddings", {"loaded": {}, "skipped": {}}),
                                                ("hypernetworks", []), ("face-restorers", []), ("prompt-styles", []),
                                                ("scripts", {"txt2img": [], "img2img": []}), ("cmd-flags", {})])
def test_read_endpoints(base_url: str, path: str, expected: object) -> None:
    assert httpx.get(f"{base_url}/sdapi/v1/{path}").json() == expected


def test_memory_and_refresh(base_url: str) -> None:
    memory = httpx.get(f"{base_url}/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["free"] > 0 and "error" in memory["cuda"]
    assert httpx.post(f"{base_url}/sdapi/v1/refresh-checkpoints").status_code == 200


def test_openai_images_edit(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    png = io.BytesIO()
    RED.save(png, format="PNG")
    edited = client.images.edit(image=("red.png", png.getvalue(), "image/png"), prompt="a red cube", size="64x64",
                                response_format="b64_json", extra_body={"num_inference_steps": 3, "seed": 2})
    image = Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json or "")))
    assert image.size == (64, 64) and "Denoising strength: 0.75" in image.info["parameters"]
    listed = client.images.edit(image=[("red.png", png.getvalue(), "image/png")], prompt="a red cube",
                                size="64x64", extra_body={"num_inference_steps": 3})
    assert (listed.data[0].url or "").endswith(".png")
    with pytest.raises(openai.BadRequestError, match="(?i)mask"):
        client.images.edit(image=("red.png", png.getvalue(), "image/png"), mask=("m.png", png.getvalue()),
                           prompt="x", size="64x64")
    with pytest.raises(openai.BadRequestError):
        client.images.edit(image=("bad.png", b"not a picture", "image/png"), prompt="x", size="64x64")


def test_png_info_reads_what_a_picture_carries(api: webuiapi.WebUIApi) -> None:
    made = api.txt2img(prompt="a red cube, shiny", negative_prompt="blurry", width=64, height=64, steps=3, seed=11)
    info = api.png_info(made.image)
    assert info.info == made.image.info["parameters"]
    assert info.parameters["Prompt"] == "a red cube, shiny" and info.parameters["Negative prompt"] == "blurry"
    assert info.parameters["Steps"] == "3" and info.parameters["Seed"] == "11"


def test_switches_we_do_not_have_are_refused_when_on(base_url: str) -> None:
    body: dict[str, Any] = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
    off = httpx.post(f"{base_url}/sdapi/v1/txt2img", json={**body, "enable_hr": False, "restore_faces": False,
                                                           "tiling": False}, timeout=60)
    assert off.status_code == 200, off.text  # what every client sends: accepted
    for switch in ("enable_hr", "restore_faces", "tiling"):
        on = httpx.post(f"{base_url}/sdapi/v1/txt2img", json={**body, switch: True}, timeout=60)
        assert on.status_code == 400 and on.json()["error"]["param"] == switch, on.text
