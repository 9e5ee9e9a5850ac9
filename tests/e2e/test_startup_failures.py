"""Start-up failures are one clear line on stderr and exit status 2, never a traceback: a port in use (found
before any model loads), an uncreatable or read-only data folder, bad settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def serve(models: Path, data: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--demo", *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "AIPC_MODELS_DIR": str(models), "AIPC_DATA_DIR": str(data),
                               **(env or {})})
    return proc.returncode, proc.stderr, time.monotonic() - t0


def one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines, stderr
    assert lines[-1].startswith("aipc-chat: "), stderr
    return lines[-1]


def test_a_port_in_use_is_reported_before_any_model_loads(demo_models: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr, seconds = serve(demo_models.parent, tmp_path / "data", "--port", str(port))
    line = one_clear_line(stderr)
    assert code == 2 and seconds < 2.0
    assert f"Port {port}" in line and "already in use" in line and "--port" in line
    assert not (tmp_path / "data").exists()  # nothing was created before the port was checked


def test_an_uncreatable_data_folder(demo_models: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    code, stderr, _ = serve(demo_models.parent, tmp_path / "a-file" / "data", "--port", str(free_port()))
    line = one_clear_line(stderr)
    assert code == 2 and "cannot be written" in line and "AIPC_DATA_DIR" in line


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_data_folder(demo_models: Path, read_only_folder: Path) -> None:
    code, stderr, _ = serve(demo_models.parent, read_only_folder, "--port", str(free_port()))
    line = one_clear_line(stderr)
    assert code == 2 and "cannot be written" in line and "Read-only file system" in line


@pytest.mark.parametrize(("env", "said"), [({"AIPC_PORT": "abc"}, "AIPC_PORT"),
                                           ({"AIPC_MAX_NUM_SEQS": "0"}, "AIPC_MAX_NUM_SEQS")])
def test_bad_settings(demo_models: Path, tmp_path: Path, env: dict[str, str], said: str) -> None:
    code, stderr, _ = serve(demo_models.parent, tmp_path / "data", env=env)
    line = one_clear_line(stderr)
    assert code == 2 and "invalid configuration" in line and said in line


def test_a_bad_users_file(demo_models: Path, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# ours\nalice:not-a-hash\n")
    code, stderr, took = serve(demo_models.parent, tmp_path / "data", "--port", str(free_port()),
                               env={"AIPC_USERS_FILE": str(users)})
    line = one_clear_line(stderr)
    assert code == 2 and "line 2" in line and "aipc-chat users add" in line and took < 30
    code, stderr, _ = serve(demo_models.parent, tmp_path / "data", env={"AIPC_USERS_FILE": str(tmp_path / "none")})
    assert code == 2 and "Cannot read AIPC_USERS_FILE" in one_clear_line(stderr)
    code, stderr, _ = serve(demo_models.parent, tmp_path / "data",
                            env={"AIPC_USERS_FILE": str(users), "AIPC_API_KEY": "k"})
    assert code == 2 and "not both" in one_clear_line(stderr)


def test_a_gguf_openvino_cannot_run(demo_models: Path, tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "gemma.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, stderr, took = serve(demo_models.parent, tmp_path / "data", "--port", str(free_port()),
                               env={"AIPC_LLM_PATH": str(path)})
    line = one_clear_line(stderr)
    assert code == 2 and "gemma.gguf cannot be served" in line and "architecture 'gemma2'" in line and took < 30
