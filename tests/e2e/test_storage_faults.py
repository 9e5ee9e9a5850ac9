"""A data folder on a tiny tmpfs, filled until writes fail: clear 507s (no traceback, no reset), nothing stored is
lost, /ready still tells the models' truth and reports the storage, and service resumes once space is back."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(folder)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write until the disk is full; the filler's path."""
    filler = folder / "filler"
    # unbuffered: closing the file has nothing left to write (a buffered file's close would fail on the full disk)
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:  # the last bytes, below a block
        for _ in range(4096):
            out.write(b"\0" * 512)
    return filler


def chat(client: httpx.Client, message: str) -> httpx.Response:
    return client.post("/chat", json={"user_id": "dee", "message": message, "image": "never"})


def test_a_full_disk_is_a_507_and_service_resumes(demo_models: Path, small_disk: Path) -> None:
    server: LiveServer = start_server(demo_models.parent, small_disk / "data", small_disk.parent / "server.log",
                                      env={"AIPC_MIN_FREE_MB": "1"})
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            assert chat(client, "First, while there is room.").status_code == 200
            filler = fill(small_disk)
            try:
                r = chat(client, "Second, on a full disk.")
                assert r.status_code == 507, r.text
                error = r.json()["error"]
                assert error["code"] == "storage_error" and "disk" in error["message"]
                r = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64",
                                                                 "num_inference_steps": 1})
                assert r.status_code == 507 and r.json()["error"]["code"] == "storage_error"
                ready = client.get("/ready")  # the same connection: nothing was reset
                assert ready.status_code == 200 and ready.json()["storage"]["state"] == "low"
            finally:
                filler.unlink()
            assert chat(client, "Third, with room again.").status_code == 200
            assert client.get("/ready").json()["storage"]["state"] == "ok"
            history = client.get("/chat/dee/history").json()["messages"]
            assert [m["content"] for m in history if m["role"] == "user"] == [
                "First, while there is room.", "Third, with room again."]
            r = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64",
                                                             "num_inference_steps": 1})
            assert r.status_code == 200
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_enospc_is_what_the_filler_meets(small_disk: Path) -> None:
    """The fixture's premise: writes on the small disk really fail with ENOSPC once it is full."""
    filler = fill(small_disk)
    with pytest.raises(OSError, match="No space left on device") as err:
        (small_disk / "more").write_bytes(b"x" * 65536)
    assert err.value.errno == errno.ENOSPC
    filler.unlink()
