"""Pictures in S3-compatible storage (AIPC_IMAGE_STORE_URL) on a live demo server over a real SeaweedFS: the
returned URLs serve the PNG from the bucket (through the server, or presigned with AIPC_IMAGE_URL_EXPIRY), nothing is
written to the data folder, and a store that goes away is a 503 ``store_unavailable`` while the server keeps serving
and tells the truth about its models, every picture still there once the store is back."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import LiveServer, start_server
from tests.services import S3Server

pytestmark = pytest.mark.e2e

PREFIX = "shared/pictures"
PICTURE = {"prompt": "a lighthouse at dusk", "size": "64x64", "num_inference_steps": 2, "seed": 11}


def serve(demo_models: Path, s3: S3Server, bucket: str, root: Path, **env: str) -> LiveServer:
    return start_server(demo_models.parent, root / "data", root / "server.log", env={
        **s3.env(), "AIPC_IMAGE_STORE_URL": f"s3://{bucket}/{PREFIX}", **env})


@pytest.fixture
def server(demo_models: Path, s3_bucket: tuple[S3Server, str], tmp_path: Path) -> Iterator[LiveServer]:
    """A demo server keeping its pictures in the test's bucket, URLs through the server (expiry 0)."""
    s3, bucket = s3_bucket
    live = serve(demo_models, s3, bucket, tmp_path)
    yield live
    live.stop()


def generate(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/images/generations", json={**PICTURE, **body}, timeout=120)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def name_of(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[1].removesuffix(".png")


def stored(s3: S3Server, bucket: str, name: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=bucket, Key=f"{PREFIX}/{name}.png")["Body"].read())


def local_pngs(root: Path) -> list[Path]:
    return list((root / "data").rglob("*.png"))


def test_a_picture_url_serves_the_png_from_the_bucket(server: LiveServer, s3_bucket: tuple[S3Server, str],
                                                      tmp_path: Path) -> None:
    s3, bucket = s3_bucket
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        r = generate(client, n=2)
        assert r.status_code == 200, r.text
        urls = [d["url"] for d in r.json()["data"]]
        assert len(urls) == 2 and all(u.startswith(f"{server.base_url}/images/") for u in urls)
        for url in urls:
            got = client.get(url)
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert got.content == stored(s3, bucket, name_of(url))  # streamed from the bucket, byte for byte
            assert png(got.content).size == (64, 64) and "Seed: " in png(got.content).info["parameters"]
        b64 = generate(client, response_format="b64_json").json()["data"][0]["b64_json"]
        assert png(base64.b64decode(b64)).size == (64, 64)  # read back from the bucket for the answer
        missing = client.get(f"/images/{'0' * 32}.png")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert len([k for k in _keys(s3, bucket) if k.startswith(f"{PREFIX}/")]) == 3
    assert local_pngs(tmp_path) == []


def test_with_an_expiry_urls_are_presigned(demo_models: Path, s3_bucket: tuple[S3Server, str],
                                           tmp_path: Path) -> None:
    s3, bucket = s3_bucket
    live = serve(demo_models, s3, bucket, tmp_path, AIPC_IMAGE_URL_EXPIRY="600")
    try:
        with httpx.Client(base_url=live.base_url, timeout=60) as client:
            r = generate(client)
            assert r.status_code == 200, r.text
            url = r.json()["data"][0]["url"]
            assert url.startswith(f"{s3.endpoint}/{bucket}/{PREFIX}/") and "X-Amz-Expires=600" in url
            name = name_of(url)
            fetched = httpx.get(url)  # straight from the store, no server in between
            assert fetched.status_code == 200 and fetched.content == stored(s3, bucket, name)
            assert png(fetched.content).size == (64, 64)
            moved = client.get(f"/images/{name}.png")  # the server's own URL sends the client on to a fresh one
            assert moved.status_code == 307 and moved.headers["location"].startswith(f"{s3.endpoint}/{bucket}/")
            assert httpx.get(moved.headers["location"]).content == fetched.content
            assert client.get(f"/images/{'0' * 32}.png").status_code == 404
    finally:
        live.stop()
    assert local_pngs(tmp_path) == []


def test_deleting_a_conversation_deletes_its_pictures_in_the_bucket(server: LiveServer,
                                                                     s3_bucket: tuple[S3Server, str]) -> None:
    s3, bucket = s3_bucket
    turn = {"user_id": "erin", "message": "Draw a boat", "image": "always",
            "image_options": {"steps": 2, "size": "64x64"}}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        kept = name_of(generate(client).json()["data"][0]["url"])  # not in any conversation
        r = client.post("/chat", json=turn)
        assert r.status_code == 200 and r.json()["image_state"] == "done", r.text
        drawn = name_of(r.json()["image_urls"][0])
        assert f"{PREFIX}/{drawn}.png" in _keys(s3, bucket)
        gone = client.delete("/chat/erin/history")
        assert gone.status_code == 200 and gone.json()["deleted_images"] == 1, gone.text
        assert _keys(s3, bucket) == [f"{PREFIX}/{kept}.png"]
        assert client.get(f"/images/{drawn}.png").status_code == 404
        # With the store away the messages still go; the answer says the pictures could not be deleted.
        r = client.post("/chat", json=turn)
        assert r.status_code == 200, r.text
        s3.stop()
        try:
            gone = client.delete("/chat/erin/history")
        finally:
            s3.start()
        assert gone.status_code == 200 and gone.json()["deleted_messages"] == 2, gone.text
        assert gone.json()["deleted_images"] == 0 and gone.json()["image_error"]["code"] == "store_unavailable"
        assert client.get("/chat/erin/history").json()["messages"] == []
        assert client.get(r.json()["image_urls"][0]).status_code == 200  # left to retention, not lost mid-way


def test_a_store_that_goes_away_is_a_503_and_service_resumes(server: LiveServer, s3_bucket: tuple[S3Server, str],
                                                             ) -> None:
    s3, bucket = s3_bucket
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        before = generate(client).json()["data"][0]["url"]
        picture = client.get(before).content
        s3.stop()
        try:
            for r in (generate(client), client.get(before)):
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "store_unavailable" and error["type"] == "storage_error"
                assert s3.endpoint in error["message"] and "Nothing already stored is lost" in error["message"]
                assert int(r.headers["retry-after"]) > 0
            ready = client.get("/ready")  # not ready, saying why: the models are fine, the store is not
            assert ready.status_code == 503
            assert {kind: m["state"] for kind, m in ready.json()["models"].items()} == {
                "llm": "ready", "image": "ready"}
            store = ready.json()["storage"]["image_store"]
            assert store["state"] == "unreachable" and s3.endpoint in store["error"]
            chat = client.post("/chat", json={"user_id": "dee", "message": "Still there?", "image": "never"})
            assert chat.status_code == 200 and chat.json()["assistant_response"]
        finally:
            s3.start()
        after = generate(client)
        assert after.status_code == 200, after.text
        assert client.get(after.json()["data"][0]["url"]).status_code == 200
        assert client.get(before).content == picture
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["storage"]["image_store"]["state"] == "ok"
    assert "Traceback" not in server.log()


def _keys(s3: S3Server, bucket: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", ())]
