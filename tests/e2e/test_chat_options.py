"""``GET /chat/options`` on live servers: what the served image model accepts (the page builds its controls from it),
and a /chat sampler checked against it before the turn starts."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aipc_chat.engines.contract import SAMPLERS
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e


def options(base_url: str) -> dict[str, Any]:
    r = httpx.get(f"{base_url}/chat/options", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def chat(base_url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/chat", json={"user_id": f"u-{uuid.uuid4().hex[:8]}", **body}, timeout=120)


def sides(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


def test_the_demo_server_offers_what_its_models_accept(base_url: str) -> None:
    body = options(base_url)
    assert body["demo"] is True
    assert body["models"] == {"llm": "aipc-demo-deepseek-r1", "image": "aipc-demo-sd15"}
    image = body["image"]
    assert image["ready"] is True
    assert image["max_size"] == 512  # the demo image model takes at most 512
    step = image["size_step"]
    assert step and image["min_size"] == step and image["native_size"]
    assert image["sizes"][:3] == ["256x256", "384x256", "256x384"]  # smallest first, landscape before portrait
    assert {"256x256", "384x384", "512x512", "512x384", "384x512"} <= set(image["sizes"])
    for size in image["sizes"]:
        width, height = sides(size)
        assert step <= width <= 512 and step <= height <= 512 and width % step == 0 and height % step == 0, size
    assert not any("768" in size for size in image["sizes"])
    assert image["max_steps"] == 100 and image["default_steps"] == 20 and image["max_n"] == 4
    assert image["samplers"] == list(SAMPLERS["genai"]) and image["default_sampler"] in image["samplers"]
    assert image["guidance_scale"] == {"min": 0.0, "max": 30.0, "default": 7.5}
    assert image["static_size"] is None

    assert image["sizes"][-1] == "512x512"

    # What is offered is what the engine takes (a large one, not square), and what is not offered it refuses.
    ok = httpx.post(f"{base_url}/v1/images/generations", timeout=120, json={
        "prompt": "a red fox", "size": "512x384", "num_inference_steps": 1, "response_format": "b64_json"})
    assert ok.status_code == 200, ok.text
    refused = httpx.post(f"{base_url}/v1/images/generations", timeout=60, json={
        "prompt": "a red fox", "size": "768x768", "num_inference_steps": 1})
    assert refused.status_code == 400 and "512" in refused.json()["error"]["message"]


def test_the_chosen_sampler_renders_the_picture(base_url: str) -> None:
    from PIL import Image

    r = chat(base_url, message="Draw a red fox", image="always", image_options={
        "steps": 2, "size": "64x64", "guidance_scale": 3.5, "negative_prompt": "blurry", "sampler": "euler A"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_state"] == "done", body
    png = httpx.get(body["image_urls"][0], timeout=10)
    with Image.open(io.BytesIO(png.content)) as im:
        parameters = str(im.info["parameters"])
    assert "Sampler: Euler a" in parameters and "CFG scale: 3.5" in parameters, parameters
    assert "Negative prompt: blurry" in parameters, parameters


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_sampler_is_refused_before_the_turn(base_url: str, stream: bool) -> None:
    # Not a sampler at all: the schema says so.
    r = chat(base_url, message="Draw a cat", image="always", stream=stream, image_options={"sampler": "Bogus 9000"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "image_options.sampler" and "Bogus 9000" in error["message"]
    assert "Euler a" in error["message"]  # says what to use
    # A sampler of the other image runtime (optimum's DPM++): this model's engine refuses it, before any stream.
    r = chat(base_url, message="Draw a cat", image="always", stream=stream, image_options={"sampler": "DPM++ 2M"})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["param"] == "image_options.sampler" and "DPM++ 2M" in error["message"]
    assert all(name in error["message"] for name in SAMPLERS["genai"])  # what this runtime takes


@pytest.fixture
def chat_only(demo_models: Path, tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_IMAGE_REPO": "none"})
    yield server
    server.stop()


def test_a_chat_only_server_has_no_image_options(chat_only: LiveServer) -> None:
    body = options(chat_only.base_url)
    assert body == {"image": None, "demo": True, "models": {"llm": "aipc-demo-deepseek-r1", "image": None}}
    # A sampler means nothing without pictures: the turn is answered in text.
    r = chat(chat_only.base_url, message="Hello", image_options={"sampler": "Euler a"})
    assert r.status_code == 200 and r.json()["image_generated"] is False


def test_models_by_path_are_not_the_demo(demo_models: Path, tmp_path: Path) -> None:
    # The demo model files served as a user's own (AIPC_*_PATH): not flagged as the demo, and the size limit is the
    # setting's (the 512 cap is the demo's).
    server = start_server(tmp_path / "models", tmp_path / "data", tmp_path / "server.log", demo=False,
                          env={"AIPC_LLM_PATH": str(demo_models / "llm"), "AIPC_IMAGE_PATH": str(demo_models / "image"),
                               "AIPC_IMAGE_MAX_SIZE": "768", "AIPC_API_KEY": "sesame-1234"})
    try:
        assert httpx.get(f"{server.base_url}/chat/options", timeout=10).status_code == 401  # keyed as /chat is
        r = httpx.get(f"{server.base_url}/chat/options", headers={"Authorization": "Bearer sesame-1234"}, timeout=10)
        body = r.json()
        assert body["demo"] is False and body["models"]["image"] and body["models"]["llm"]
        assert body["image"]["max_size"] == 768 and "768x768" in body["image"]["sizes"]
        assert "1024x1024" not in body["image"]["sizes"]
    finally:
        server.stop()


def test_the_page_ships_its_markdown_libraries_and_nothing_else(base_url: str) -> None:
    for name in ("marked.umd.js", "purify.min.js"):
        r = httpx.get(f"{base_url}/web/vendor/{name}", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), name
        assert len(r.content) > 10_000
    for path in ("vendor/README.md", "vendor/marked.LICENSE.md", "vendor/", "../settings.py", "%2e%2e/settings.py"):
        assert httpx.get(f"{base_url}/web/{path}", timeout=10).status_code == 404, path


def test_the_page_runs_only_its_own_scripts(base_url: str) -> None:
    """A Content-Security-Policy under the sanitizer: no inline script, nothing loaded from elsewhere."""
    policy = httpx.get(f"{base_url}/", timeout=10).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'" and "script-src" not in directives  # scripts: 'self' only
    assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in policy and "*" not in policy
