"""Start-up a person can read (issue #27): one line with the server's address once it is ready, no third-party
chatter at the default log level (all of it at debug), Ctrl-C during loading stops at once and without a traceback,
and OpenVINO's telemetry writes nothing to the home folder unless the user opts in."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import LiveServer, free_port, start_server
from tests.waiting import HANG

pytestmark = pytest.mark.e2e

READY = re.compile(r"aipc-chat ready: chat page (http://\S+)/  API docs (http://\S+)$", re.MULTILINE)
OURS = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ +aipc_chat(\.\w+)* \[")  # our format, our loggers
UVICORN = re.compile(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL): ")  # uvicorn's own lines: its start, stop, access log
STOPPED = "aipc-chat: stopped (Ctrl-C)"
CI_MARKERS = ("CI", "TF_BUILD", "JENKINS_URL")  # openvino_telemetry turns itself off when it sees one of these

# `aipc-chat serve` with the image pipeline's build held (tests/faults.py), as a long compilation holds it: loading
# lasts until the process stops.
SLOW_IMAGE_LOAD = """
import sys

from aipc_chat import runtime
from aipc_chat.cli import main
from tests.faults import Factories

init = runtime.Runtime.__init__


def held_image_build(self, settings, *, pipelines=None):
    init(self, settings, pipelines=lambda kind, real: Factories(real, "block") if kind == "image" else real)


runtime.Runtime.__init__ = held_image_build
sys.exit(main(sys.argv[1:]))
"""


def wait_for(server: LiveServer, pattern: re.Pattern[str], timeout: float = HANG) -> re.Match[str]:
    """The first match of ``pattern`` in the server's output, once it is written (the process may still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pattern.search(server.log())
        if found or server.proc.poll() is not None:
            break
        time.sleep(0.05)
    found = pattern.search(server.log())
    assert found, f"{pattern.pattern!r} not in the output:\n{server.log()}"
    return found


def stop_with_ctrl_c(server: LiveServer) -> tuple[int, float]:
    """Send SIGINT as Ctrl-C does; the exit code and the seconds until the process ended."""
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    code = server.proc.wait(60)  # only so that the test cannot hang: the time taken is measured, not limited here
    return code, time.monotonic() - t0


def foreign_lines(output: str) -> list[str]:
    """Lines neither ours nor uvicorn's: a library's log records, warnings, anything printed by native code."""
    return [line for line in output.splitlines()
            if line.strip() and not OURS.match(line) and not UVICORN.match(line) and line != STOPPED]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home folder for the server, outside any CI (openvino_telemetry's own switch)."""
    for name in CI_MARKERS:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def test_one_ready_line_with_the_page_and_the_docs(demo_models: Path, tmp_path: Path, home: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log", env={"HOME": str(home)})
    try:
        page, docs = wait_for(server, READY).groups()
        assert page == server.base_url and docs == f"{server.base_url}/docs"
        assert httpx.get(f"{page}/", timeout=10).status_code == 200
        assert "swagger" in httpx.get(docs, timeout=10).text.lower()
        assert httpx.get(f"{server.base_url}/ready", timeout=10).json()["ready"] is True
        code, _ = stop_with_ctrl_c(server)
    finally:
        server.stop()
    output = server.log()
    assert len(READY.findall(output)) == 1, output
    assert code == 130 and output.rstrip().endswith(STOPPED) and "Traceback" not in output, output


@pytest.mark.parametrize("runtime", ["genai", "optimum"])
def test_no_library_lines_at_the_default_level_and_all_of_them_at_debug(demo_models: Path, tmp_path: Path,
                                                                        runtime: str) -> None:
    if runtime == "optimum":
        pytest.importorskip("optimum.intel", reason="the optimum image runtime is an extra")
    outputs = {}
    for level in ("info", "debug"):
        server = start_server(demo_models.parent, tmp_path / level, tmp_path / f"{level}.log",
                              env={"AIPC_IMAGE_RUNTIME": runtime, "AIPC_LOG_LEVEL": level})
        try:  # a picture and a chat answer: the image and LLM pipelines have both run
            picture = httpx.post(f"{server.base_url}/sdapi/v1/txt2img", timeout=120,
                                 json={"prompt": "a red apple", "width": 64, "height": 64, "steps": 2})
            assert picture.status_code == 200, picture.text
            wait_for(server, READY)
        finally:
            server.stop(signal.SIGINT)
        outputs[level] = server.log()
    assert foreign_lines(outputs["info"]) == [], outputs["info"]
    assert foreign_lines(outputs["debug"]), "debug level shows the libraries' lines too:\n" + outputs["debug"]
    assert "Traceback" not in outputs["info"] + outputs["debug"]


def test_ctrl_c_while_a_model_loads_stops_at_once_without_a_traceback(demo_models: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "AIPC_MODELS_DIR": str(demo_models.parent), "AIPC_DATA_DIR": str(tmp_path / "data"),
           "AIPC_LOG_LEVEL": "info", "PYTHONPATH": str(REPO)}
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_IMAGE_LOAD, "serve", "--demo", "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        models = wait_until_loading(server)
        assert models["image"]["state"] == "loading", models
        code, seconds = stop_with_ctrl_c(server)
    finally:
        server.stop(signal.SIGKILL)
    output = server.log()
    print(f"Ctrl-C while the image model loaded: the process ended {seconds:.2f} s later")  # noqa: T201
    assert code == 130, output
    assert "Traceback" not in output and output.rstrip().endswith(STOPPED), output
    assert not READY.search(output), output


def wait_until_loading(server: LiveServer, timeout: float = HANG) -> dict[str, dict[str, object]]:
    """/ready's models once the image model is loading and the LLM is done (so only the held load is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()
        try:
            models: dict[str, dict[str, object]] = httpx.get(f"{server.base_url}/ready", timeout=5).json()["models"]
        except httpx.TransportError:
            models = {}
        if models and models["image"]["state"] == "loading" and models["llm"]["state"] == "ready":
            return models
        time.sleep(0.05)
    raise AssertionError(f"the image model never was loading:\n{server.log()}")


def test_openvino_telemetry_writes_nothing_to_home_unless_asked(demo_models: Path, tmp_path: Path,
                                                                home: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log", env={"HOME": str(home)})
    try:
        turn = httpx.post(f"{server.base_url}/chat", timeout=120,
                          json={"user_id": "telemetry", "message": "Draw a cat.", "image": "always"})
        assert turn.status_code == 200, turn.text
    finally:
        server.stop(signal.SIGINT)
    assert sorted(home.rglob("*")) == [], server.log()

    opted_in = tmp_path / "opted-in"
    opted_in.mkdir()
    server = start_server(demo_models.parent, tmp_path / "data2", tmp_path / "server2.log",
                          env={"HOME": str(opted_in), "AIPC_OPENVINO_TELEMETRY": "true"})
    server.stop(signal.SIGINT)
    assert (opted_in / "intel").is_dir(), "the opt-in lets OpenVINO's telemetry keep its files, as it does by default"
