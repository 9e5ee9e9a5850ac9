"""The S3 image store (aipc_chat/engines/store_s3.py) on a real S3-compatible server (SeaweedFS): pictures round
trip with their parameters, unknown and malformed names are None (the malformed never reaching the store), the
oldest beyond the limit are pruned, presigned URLs fetch, and a store that goes away fails fast with
StoreUnavailable and serves again, every picture intact, once it is back."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from aipc_chat.engines.store import ImageStore, make_image_store
from aipc_chat.errors import StartupError, StorageError, StoreUnavailable
from aipc_chat.settings import Settings
from tests.services import S3Server, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

PREFIX = "pics/team"


def store_of(s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             **settings: Any) -> ImageStore:
    """The store the server's settings make, with the S3 server's key in the standard AWS variables."""
    for name, value in s3.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return make_image_store(Settings(image_store_url=f"s3://{bucket}/{PREFIX}/", s3_endpoint=s3.endpoint,
                                     data_dir=tmp_path / "data", **settings))


def picture(colour: str = "red") -> Image.Image:
    return Image.new("RGB", (32, 16), colour)


def keys(s3: S3Server, bucket: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", ())}


@pytest.fixture
def bucket(s3_bucket: tuple[S3Server, str]) -> str:
    return s3_bucket[1]


@pytest.fixture
def s3(s3_bucket: tuple[S3Server, str]) -> S3Server:
    return s3_bucket[0]


def test_a_picture_round_trips_with_its_parameters(s3: S3Server, bucket: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch)
    assert type(store).__name__ == "S3ImageStore" and store.check() is None
    name = store.save(picture(), "a red fox\nSteps: 2, Sampler: Euler a, Seed: 7")
    data = store.read(name)
    assert data is not None
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (32, 16)
    assert image.info["parameters"] == "a red fox\nSteps: 2, Sampler: Euler a, Seed: 7"
    head = s3.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{name}.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(data)
    chunks = store.open(name)
    assert chunks is not None and b"".join(chunks) == data
    assert store.exists(name) and store.path(name) is None  # nothing on the local disk
    assert store.link(name) is None  # expiry 0: URLs go through the server
    assert not (tmp_path / "data").exists()


def test_unknown_and_malformed_names(s3: S3Server, bucket: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch)
    unknown = store.new_name()
    assert store.read(unknown) is None and store.open(unknown) is None and not store.exists(unknown)
    # A store nobody answers for: a malformed name is None without asking it, a well-formed one has to ask.
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    nowhere = make_image_store(Settings(image_store_url=f"s3://{bucket}", s3_endpoint=closed,
                                        data_dir=tmp_path / "data", image_url_expiry=60))
    for malformed in ("../../etc/passwd", "0" * 31, "0" * 32 + "/x", "A" * 32, ""):
        assert nowhere.read(malformed) is None and nowhere.open(malformed) is None
        assert not nowhere.exists(malformed) and nowhere.link(malformed) is None
    with pytest.raises(StoreUnavailable):
        nowhere.read(unknown)
    with pytest.raises(ValueError, match="not an image name"):
        store.save(picture(), "x", name="../escape")


def test_the_oldest_beyond_the_limit_are_pruned(s3: S3Server, bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch, image_retention=3)
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/notes.txt", Body=b"not a picture")  # never counted or pruned
    old = [store.save(picture("blue"), f"old {i}") for i in range(3)]
    newest_old = max(client.head_object(Bucket=bucket, Key=f"{PREFIX}/{n}.png")["LastModified"] for n in old)

    def clock_moved_on() -> bool:  # LastModified counts whole seconds: the new ones must be seen as newer
        client.put_object(Bucket=bucket, Key="clock", Body=b"")
        return bool(client.head_object(Bucket=bucket, Key="clock")["LastModified"] > newest_old)

    wait_until(clock_moved_on, "the store's clock passing the old pictures' second")
    new = [store.save(picture("green"), f"new {i}") for i in range(3)]
    assert keys(s3, bucket) == {f"{PREFIX}/{n}.png" for n in new} | {f"{PREFIX}/notes.txt", "clock"}
    assert [store.read(n) for n in old] == [None, None, None]


def test_delete_removes_only_the_named_pictures(s3: S3Server, bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch)
    gone, kept = store.save(picture(), "gone"), store.save(picture("blue"), "kept")
    assert store.delete([gone, gone, "../kept", ""]) == 1  # a name twice is one key; malformed names never go
    assert store.read(gone) is None and store.read(kept) is not None
    assert keys(s3, bucket) == {f"{PREFIX}/{kept}.png"}
    assert store.delete([]) == 0


def test_a_presigned_url_fetches_the_picture(s3: S3Server, bucket: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch, image_url_expiry=600)
    name = store.save(picture(), "a lighthouse")
    url = store.link(name)
    assert url is not None and url.startswith(f"{s3.endpoint}/{bucket}/{PREFIX}/{name}.png?")
    assert "X-Amz-Expires=600" in url
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == store.read(name)
    assert httpx.get(url.split("?")[0]).status_code == 403  # the signature is what lets it through
    assert store.link(store.new_name()) is not None  # signing asks nothing of the store


def test_a_stopped_store_fails_fast_and_serves_again(s3: S3Server, bucket: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch)
    config = store._client.meta.config  # type: ignore[attr-defined]
    assert config.connect_timeout <= 5 and config.read_timeout <= 30 and config.retries["total_max_attempts"] <= 3
    before = store.save(picture(), "before the outage")
    data = store.read(before)
    s3.stop()
    try:
        with pytest.raises(StoreUnavailable) as failed:
            store.save(picture("black"), "during the outage")
        message = failed.value.message
        assert s3.endpoint in message and bucket in message and "Nothing already stored is lost" in message
        assert failed.value.status == 503 and failed.value.retry_after
        for call in (store.read, store.open, store.exists):
            with pytest.raises(StoreUnavailable):
                call(before)
        reason = store.check()
        assert reason is not None and s3.endpoint in reason
    finally:
        s3.start()
    assert store.check() is None
    assert store.read(before) == data
    after = store.save(picture("white"), "after the outage")
    assert store.exists(after) and keys(s3, bucket) == {f"{PREFIX}/{before}.png", f"{PREFIX}/{after}.png"}


def test_a_silent_store_is_reported_by_a_quick_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that takes the connection and never answers (hung, not down): ``check()`` (what /ready and doctor
    call) says so through its own client, which waits 2 s once rather than the store client's 15 s twice."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody reads or answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = make_image_store(Settings(image_store_url="s3://quiet", s3_endpoint=endpoint,
                                          data_dir=tmp_path / "data"))
        reason = store.check()
    assert reason is not None and "does not answer (it stopped answering mid-way)" in reason and endpoint in reason
    probe = store._probe.meta.config  # type: ignore[attr-defined]
    assert (probe.connect_timeout, probe.read_timeout, probe.retries["total_max_attempts"]) == (2.0, 2.0, 1)
    main = store._client.meta.config  # type: ignore[attr-defined]
    assert (main.read_timeout, main.retries["total_max_attempts"]) == (15.0, 2)


def test_refusals_say_what_to_fix(s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_of(s3, bucket, tmp_path, monkeypatch)
    missing = make_image_store(Settings(image_store_url="s3://no-such-bucket-here", s3_endpoint=s3.endpoint,
                                        data_dir=tmp_path / "data"))
    assert "There is no bucket 'no-such-bucket-here'" in (missing.check() or "")
    with pytest.raises(StorageError, match="no bucket 'no-such-bucket-here'"):
        missing.save(picture(), "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    denied = make_image_store(Settings(image_store_url=f"s3://{bucket}", s3_endpoint=s3.endpoint,
                                       data_dir=tmp_path / "data"))
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY") as refused:
        denied.save(picture(), "x")
    assert refused.value.status == 507 and "refused" in refused.value.message
    assert "refused" in (denied.check() or "")
    assert store.check() is None  # the right key still works


def test_without_boto3_the_start_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delitem(sys.modules, "aipc_chat.engines.store_s3", raising=False)
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 fails as when it is not installed
    with pytest.raises(StartupError, match=r'pip install "aipc-chat\[team\]"'):
        make_image_store(Settings(image_store_url="s3://pictures", data_dir=tmp_path))
    assert type(make_image_store(Settings(data_dir=tmp_path))).__name__ == "FolderImageStore"


@pytest.mark.parametrize("url", ["pictures", "s3://", "http://host/bucket", "s3://bucket/p?x=1"])
def test_a_malformed_store_url_is_a_startup_error(url: str) -> None:
    from aipc_chat.engines.store_s3 import parse_store_url

    with pytest.raises(StartupError, match="s3://bucket/prefix"):
        parse_store_url(url)
    assert parse_store_url("s3://pictures") == ("pictures", "")
    assert parse_store_url("s3://pictures//a/b/") == ("pictures", "a/b")
