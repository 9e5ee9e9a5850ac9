"""Settings and messages that help a newcomer (issue #30), through the real CLI with a clean environment: a misspelt
variable is named with the closest setting, sizes and durations in common forms are taken, a bad value is one line
naming the variable and the forms it takes, a wrong kind of path is refused clearly, every missing model is named at
once with what fetches it, the 413 names the setting (and a phone photo fits by default), and an unreachable remote
engine is named by its URL and setting."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import LiveServer, free_port, start_server

pytestmark = pytest.mark.e2e

MISSPELT = "AIPC_KEEP_ALVE is not a setting; did you mean AIPC_KEEP_ALIVE?"


def clean_env(**values: str) -> dict[str, str]:
    """The environment with no AIPC_ or seed settings and no hub access, plus ``values``."""
    seed = ("USE_MOCKS", "AUTO_DOWNLOAD_MODELS", "MODELS_CACHE_DIR", "DEEPSEEK_", "STABLE_DIFFUSION_", "HF_",
            "HUGGINGFACE_TOKEN", "REQUEST_TIMEOUT", "CONVERSATION_HISTORY_LIMIT")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("AIPC_", *seed))}
    return {**env, **values}


def serve(tmp_path: Path, *args: str, **values: str) -> subprocess.CompletedProcess[str]:
    """``aipc-chat serve`` until it exits (each test here makes it exit at start)."""
    env = clean_env(AIPC_MODELS_DIR=str(tmp_path / "models"), AIPC_DATA_DIR=str(tmp_path / "data"), **values)
    return subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--port", str(free_port()), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    """A start-up refusal: status 2, no traceback, and its last line is ours."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout and lines, done.stderr
    assert lines[-1].startswith("aipc-chat: "), done.stderr
    return lines[-1]


def test_a_misspelt_variable_is_named_with_the_closest_setting(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log",
                          env={"AIPC_KEEP_ALVE": "1m", "AIPC_MAX_TOKNS_LIMIT": "10"})
    server.stop()
    output = server.log()
    warnings = [line for line in output.splitlines() if "is not a setting" in line]
    assert len(warnings) == 2 and all(" WARNING " in line for line in warnings), output
    assert warnings[0].endswith(MISSPELT), output
    assert warnings[1].endswith("AIPC_MAX_TOKNS_LIMIT is not a setting; did you mean AIPC_MAX_TOKENS_LIMIT?")
    assert output.index(MISSPELT) < output.index("Application startup complete")  # said at start, not later


def test_common_forms_of_sizes_durations_and_levels_are_taken(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "server.log", env={
        "AIPC_KEEP_ALIVE": "5min", "AIPC_MEMORY_LIMIT": "8G", "AIPC_LOG_LEVEL": "debug",
        "AIPC_REQUEST_TIMEOUT": "2m", "AIPC_MAX_BODY_BYTES": "32MB"})
    try:
        ready = httpx.get(f"{server.base_url}/ready", timeout=10).json()
        assert ready["memory"]["limit_mb"] == 8192.0
        assert 295 <= ready["models"]["llm"]["keep_alive_left"] <= 300 or ready["models"]["llm"]["held_by"]
    finally:
        server.stop()
    output = server.log()
    assert " DEBUG " in output and "is not a setting" not in output and "invalid configuration" not in output


def test_log_level_flag_in_any_case(demo_models: Path, tmp_path: Path) -> None:
    done = serve(tmp_path, "--demo", "--log-level", "WARNING", AIPC_LLM_REPO="none", AIPC_IMAGE_REPO="none")
    assert "nothing to serve" in last_line(done)  # the flag was taken: the start got as far as the models


def test_a_bad_duration_is_refused_with_the_forms_it_takes(tmp_path: Path) -> None:
    done = serve(tmp_path, "--demo", AIPC_KEEP_ALIVE="soon", AIPC_KEEP_ALVE="5m")
    line = last_line(done)
    assert line.startswith("aipc-chat: invalid configuration: AIPC_KEEP_ALIVE='soon': not a duration; use ")
    assert all(form in line for form in ("300", "30s", "5min", "1h30m", "500ms", "-1")), line
    assert "^" not in line and "pattern" not in line.lower() and "pydantic" not in done.stderr
    assert f"aipc-chat: {MISSPELT}" in done.stderr  # perhaps the cause: said with the refusal
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_each_bad_setting_gets_its_own_line(tmp_path: Path) -> None:
    done = serve(tmp_path, "--demo", AIPC_MEMORY_LIMIT="8 gigs", REQUEST_TIMEOUT="-1", AIPC_LOG_LEVEL="loud")
    last_line(done)
    said = [line for line in done.stderr.splitlines() if line.startswith("aipc-chat: invalid configuration: ")]
    assert len(said) == 3, done.stderr
    assert any(line.startswith("aipc-chat: invalid configuration: AIPC_MEMORY_LIMIT='8 gigs': not a size; use ")
               and "8GiB" in line for line in said)
    assert any("REQUEST_TIMEOUT='-1'" in line and "AIPC_REQUEST_TIMEOUT" not in line for line in said)  # as set
    assert any(line.endswith("AIPC_LOG_LEVEL='loud': takes debug, info, warning, error, in any case (DEBUG, Info)")
               for line in said)


def test_llm_path_at_a_text_file_is_refused_clearly(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my model is somewhere else")
    line = last_line(serve(tmp_path, AIPC_LLM_PATH=str(notes)))
    assert line.startswith(f"aipc-chat: invalid configuration: AIPC_LLM_PATH='{notes}': a file, but not a .gguf")
    assert "an OpenVINO IR folder" in line and "a .gguf file" in line


def test_two_missing_models_are_both_named_with_their_fetch_commands(tmp_path: Path) -> None:
    line = last_line(serve(tmp_path, AIPC_AUTO_DOWNLOAD_MODELS="false"))
    assert line.startswith("aipc-chat: 2 models are missing: the llm model OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B")
    assert "the image model OpenVINO/stable-diffusion-v1-5-int8-ov@main" in line
    assert "`aipc-chat download --kind llm`" in line and "`aipc-chat download --kind image`" in line
    assert str(tmp_path / "models" / "hub") in line and "AIPC_AUTO_DOWNLOAD_MODELS is off" in line
    assert "make " not in line


def test_offline_the_way_out_does_not_send_back_to_a_download(tmp_path: Path) -> None:
    line = last_line(serve(tmp_path, HF_HUB_OFFLINE="1"))
    assert line.startswith("aipc-chat: 2 models are missing: ") and "HF_HUB_OFFLINE=1 is set" in line
    before, _, after = line.partition("Once the hub answers")
    assert "aipc-chat serve --demo" in before and "AIPC_LLM_PATH" in before and "copy the hub folder" in before
    assert "`aipc-chat download --kind" not in before  # what cannot work now is not the advice
    assert "`aipc-chat download --kind llm`" in after and "`aipc-chat download --kind image`" in after


def test_a_checkout_serves_its_own_models_folder(demo_models: Path, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "models").mkdir(parents=True)
    (checkout / "models" / ".gitkeep").touch()
    (checkout / "pyproject.toml").write_text('[project]\nname = "aipc-chat"\n')
    env = clean_env(AUTO_DOWNLOAD_MODELS="0", XDG_DATA_HOME=str(tmp_path / "user"))
    done = subprocess.run([sys.executable, "-m", "aipc_chat", "serve", "--port", str(free_port())], cwd=checkout,
                          env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, capture_output=True,
                          text=True, timeout=120, check=False)
    line = last_line(done)
    said = f"models folder {checkout / 'models'} (started in a source checkout: ./models, as `make` sets it)"
    assert said in done.stderr and str(checkout / "models" / "hub") in line
    assert "--models-dir" not in line  # `aipc-chat download` run there finds the same folder
    assert (checkout / "data" / "images").is_dir() and not (tmp_path / "user").exists()


# ---------------------------------------------------------------------------------------------- body limit


def noise_png(megabytes: float) -> bytes:
    """A PNG of random noise (it does not compress) of about ``megabytes``, in few enough pixels to decode fast."""
    from PIL import Image

    side = int((megabytes * 1e6 / 3) ** 0.5)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_a_phone_photo_fits_the_default_body_limit_for_img2img(live_server: LiveServer) -> None:
    photo = noise_png(4.6)
    body = {"prompt": "a red apple", "init_images": [base64.b64encode(photo).decode()], "width": 64, "height": 64,
            "steps": 2, "denoising_strength": 0.5}
    r = httpx.post(f"{live_server.base_url}/sdapi/v1/img2img", json=body, timeout=120)
    assert len(r.request.content) > 6_000_000 and r.status_code == 200, r.text[:500]
    assert base64.b64decode(r.json()["images"][0]).startswith(b"\x89PNG")
    r = httpx.post(f"{live_server.base_url}/v1/images/edits", timeout=120, files={"image": ("photo.png", photo)},
                   data={"prompt": "a red apple", "size": "64x64", "num_inference_steps": "2"})
    assert r.status_code == 200, r.text[:500]


def test_the_413_names_the_setting_and_its_forms(live_server: LiveServer) -> None:
    big = b"x" * (21 * 1024 * 1024)
    r = httpx.post(f"{live_server.base_url}/sdapi/v1/img2img", content=big,
                   headers={"content-type": "application/json"}, timeout=60)
    message = r.json()["error"]["message"] if isinstance(r.json()["error"], dict) else r.json()["error"]
    assert r.status_code == 413 and "AIPC_MAX_BODY_BYTES" in message and "32MB" in message, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(21):
            yield b"x" * (1024 * 1024)

    r = httpx.post(f"{live_server.base_url}/v1/images/edits", content=chunks(), timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "AIPC_MAX_BODY_BYTES" in r.text and "32MB" in r.text, r.text


# ---------------------------------------------------------------------------------------------- remote engines


class Output:
    """A server's output read as it is written, so a test waits for a line instead of polling or sleeping."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.ended = False
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.seen:
                self.lines.append(line.rstrip("\n"))
                self.seen.notify_all()
        with self.seen:
            self.ended = True
            self.seen.notify_all()

    def wait_for(self, pattern: str) -> str:
        """The first line matching ``pattern``, once written; fails when the process ends without it."""
        found = re.compile(pattern)
        with self.seen:
            self.seen.wait_for(lambda: self.ended or any(found.search(line) for line in self.lines), timeout=240)
            match = next((line for line in self.lines if found.search(line)), None)
        assert match is not None, "\n".join(self.lines)
        return match


@pytest.fixture
def unreachable_remotes(tmp_path: Path) -> Iterator[tuple[str, Output, str, str]]:
    """A server whose LLM and image engines are remotes nothing listens at (the LLM URL carries credentials)."""
    llm_port, image_port, port = free_port(), free_port(), free_port()
    env = clean_env(AIPC_DATA_DIR=str(tmp_path / "data"), AIPC_MODELS_DIR=str(tmp_path / "models"),
                    AIPC_LLM_ENDPOINT=f"http://user:hunter2@127.0.0.1:{llm_port}/v1?api_key=sk-secret",
                    STABLE_DIFFUSION_ENDPOINT=f"http://127.0.0.1:{image_port}")
    proc = subprocess.Popen([sys.executable, "-m", "aipc_chat", "serve", "--port", str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = Output(proc)
    try:
        output.wait_for(r"aipc-chat serving without every model ready")  # both remotes tried once
        yield f"http://127.0.0.1:{port}", output, f"http://127.0.0.1:{llm_port}/v1", f"http://127.0.0.1:{image_port}"
    finally:
        proc.terminate()
        proc.wait(60)


def test_an_unreachable_remote_is_named_by_its_url_and_setting(
        unreachable_remotes: tuple[str, Output, str, str]) -> None:
    url, output, llm_url, image_url = unreachable_remotes
    r = httpx.post(f"{url}/chat", timeout=60, json={"user_id": "u", "message": "Hi", "image": "never"})
    message = r.json()["error"]["message"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable", r.text
    assert f"The remote LLM at {llm_url} (AIPC_LLM_ENDPOINT) is unreachable (ConnectError" in message
    ready = httpx.get(f"{url}/ready", timeout=60).json()["models"]
    assert f"at {llm_url} (AIPC_LLM_ENDPOINT)" in ready["llm"]["error"]
    assert f"at {image_url} (STABLE_DIFFUSION_ENDPOINT)" in ready["image"]["error"]  # the name that was set
    r = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}, timeout=60)
    assert r.status_code in (502, 503) and image_url in r.text
    warned = output.wait_for(r"WARNING .*remote LLM at ")
    assert f"The remote LLM at {llm_url} (AIPC_LLM_ENDPOINT) is unreachable" in warned
    everything = "\n".join(output.lines) + message + str(ready)
    assert "hunter2" not in everything and "sk-secret" not in everything and "api_key" not in everything
