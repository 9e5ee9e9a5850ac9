"""A live server on a real socket: ``aipc-chat serve --demo`` in a subprocess, as a user starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.waiting import HANG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A running server process and where it listens."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(models_dir: Path, data_dir: Path, log_path: Path, *, env: dict[str, str] | None = None,
                 ready_timeout: float = HANG, demo: bool = True) -> LiveServer:
    """Start ``python -m aipc_chat serve --demo`` and wait until /ready says 200 (``ready_timeout``: a hang guard)."""
    port = free_port()
    full_env = {**os.environ, "AIPC_MODELS_DIR": str(models_dir), "AIPC_DATA_DIR": str(data_dir),
                "AIPC_LOG_LEVEL": "info", "AIPC_KEEP_ALIVE": "-1", **(env or {})}  # idle unload only where tested
    out = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "aipc_chat", "serve", *(["--demo"] if demo else []), "--port",
                             str(port)],
                            env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {ready_timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def live_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One demo server shared by the e2e tests that do not restart it.

    Its admission window is long (100 ms) so that a request counted as on its way and never settled would show as a
    lone request waiting (tests/e2e/test_hardening.py).
    """
    root = tmp_path_factory.mktemp("live")
    server = start_server(demo_models.parent, root / "data", root / "server.log", env={"AIPC_BATCH_WINDOW_MS": "100"})
    yield server
    server.stop()


@pytest.fixture
def base_url(live_server: LiveServer) -> str:
    return live_server.base_url


@pytest.fixture(scope="session")
def optimum_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A demo server whose pictures run through optimum-intel (``AIPC_IMAGE_RUNTIME=optimum``)."""
    root = tmp_path_factory.mktemp("optimum")
    server = start_server(demo_models.parent, root / "data", root / "server.log", env={"AIPC_IMAGE_RUNTIME": "optimum"})
    yield server
    server.stop()


@pytest.fixture(params=["genai", "optimum"])
def image_base_url(request: pytest.FixtureRequest) -> str:
    """A live server of each image runtime: the image suites run on both (a test reads which from the id)."""
    server = request.getfixturevalue("live_server" if request.param == "genai" else "optimum_server")
    return str(server.base_url)
