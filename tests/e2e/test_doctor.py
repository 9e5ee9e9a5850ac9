"""`aipc-chat doctor` and `aipc-chat models` as a user runs them (issue #30): the real command in a subprocess, with
nothing of the developer's configuration. Doctor exits 0 only when `serve` would start, and otherwise says why and
what to run; `models` shows the model each role would serve, however it was chosen."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LiveServer, free_port

pytestmark = pytest.mark.e2e


def run(command: str, tmp_path: Path, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m aipc_chat COMMAND ...`` with its own folders (the autouse fixture has cleared AIPC_* already)."""
    full_env = {**os.environ, "AIPC_MODELS_DIR": str(tmp_path / "models"), "AIPC_DATA_DIR": str(tmp_path / "data"),
                "AIPC_AUTO_DOWNLOAD_MODELS": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "aipc_chat", command, *args], capture_output=True, text=True,
                          env=full_env, check=False, timeout=120)


def lines(output: str, mark: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith(mark)]


def test_the_demo_models_on_a_free_port_would_start(demo_models: Path, tmp_path: Path) -> None:
    done = run("doctor", tmp_path, "--demo", "--port", str(free_port()))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert lines(out, "[FAIL]") == [] and out.rstrip().endswith("`aipc-chat serve` would start.")
    for expected in ("openvino 20", "openvino-genai", "openvino-tokenizers", "fastapi", "uvicorn", "OpenVINO sees CPU",
                     "llm: aipc-demo-deepseek-r1 from demo models (--demo", "image: aipc-demo-sd15 from demo models",
                     "writable (created at start)", ": free (`serve` listens at http://127.0.0.1:"):
        assert expected in out, (expected, out)
    assert any(line.startswith(("[--]   torch", "[--]   optimum-intel")) for line in lines(out, "[--]")), out
    assert not (tmp_path / "data").exists()  # the doctor looked and created nothing


def test_a_missing_model_stops_it_and_says_what_fetches_it(demo_models: Path, tmp_path: Path) -> None:
    done = run("doctor", tmp_path, "--port", str(free_port()),
               env={"AIPC_LLM_REPO": "OpenVINO/not-here-int4-ov", "AIPC_IMAGE_PATH": str(demo_models / "image")})
    assert done.returncode == 1, done.stdout
    failed = lines(done.stdout, "[FAIL]")
    assert len(failed) == 1 and failed[0].startswith("[FAIL] llm:"), done.stdout
    assert "OpenVINO/not-here-int4-ov" in failed[0] and "`aipc-chat download --kind llm`" in failed[0]
    assert "-> aipc-chat download --kind llm" in done.stdout
    assert "[ok]   image: image from AIPC_IMAGE_PATH: present (" in done.stdout  # the image model is there
    assert "would not start: 1 problem(s)" in done.stdout


def test_a_missing_default_model_is_only_a_warning_while_the_other_kind_serves(demo_models: Path,
                                                                               tmp_path: Path) -> None:
    done = run("doctor", tmp_path, "--port", str(free_port()), env={"AIPC_IMAGE_PATH": str(demo_models / "image")})
    assert done.returncode == 0, done.stdout
    warned = [line for line in lines(done.stdout, "[warn]") if line.startswith("[warn] llm:")]
    assert len(warned) == 1 and "starts without the chat model" in warned[0], done.stdout


def test_a_missing_path_names_its_setting(demo_models: Path, tmp_path: Path) -> None:
    done = run("doctor", tmp_path, "--demo", "--port", str(free_port()),
               env={"AIPC_LLM_PATH": str(tmp_path / "nowhere.gguf")})
    assert done.returncode == 1
    failed = lines(done.stdout, "[FAIL]")
    assert len(failed) == 1 and "AIPC_LLM_PATH" in failed[0] and "nowhere.gguf" in failed[0], done.stdout


def test_a_taken_port_stops_it(demo_models: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("doctor", tmp_path, "--demo", "--port", str(port))
    assert done.returncode == 1, done.stdout
    failed = lines(done.stdout, "[FAIL]")
    assert len(failed) == 1 and f"Port {port}" in failed[0] and "already in use" in failed[0], done.stdout
    assert "answers there" not in failed[0]  # a socket that is no aipc-chat


def test_a_port_taken_by_an_aipc_chat_says_so(live_server: LiveServer, tmp_path: Path) -> None:
    port = live_server.base_url.rsplit(":", 1)[1]
    done = run("doctor", tmp_path, "--demo", "--port", port)
    assert done.returncode == 1
    failed = lines(done.stdout, "[FAIL]")
    assert len(failed) == 1 and "already in use" in failed[0] and "aipc-chat 0." in failed[0], done.stdout
    assert "answers there" in failed[0]


@pytest.mark.parametrize(("env", "said"), [({"AIPC_MAX_NUM_SEQS": "0"}, "AIPC_MAX_NUM_SEQS"),
                                           ({"AIPC_PORT": "abc"}, "AIPC_PORT")])
def test_an_invalid_setting_stops_it(tmp_path: Path, env: dict[str, str], said: str) -> None:
    done = run("doctor", tmp_path, "--demo", env=env)
    assert done.returncode == 1, done.stdout
    failed = lines(done.stdout, "[FAIL]")
    assert len(failed) == 1 and "invalid configuration" in failed[0] and said in failed[0], done.stdout
    assert "openvino-genai" in done.stdout and "OpenVINO sees" in done.stdout  # what needs no settings still shows


def test_an_unwritable_data_folder_stops_it(demo_models: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    done = run("doctor", tmp_path, "--demo", "--port", str(free_port()), "--data-dir", str(tmp_path / "a-file" / "d"))
    assert done.returncode == 1
    failed = lines(done.stdout, "[FAIL]")
    assert len(failed) == 1 and "cannot be written" in failed[0] and "a-file" in failed[0], done.stdout


def test_keys_are_said_set_never_shown(demo_models: Path, tmp_path: Path) -> None:
    done = run("doctor", tmp_path, "--demo", "--port", str(free_port()),
               env={"AIPC_API_KEY": "very-secret-value", "HF_TOKEN": "hf_also_secret"})
    assert done.returncode == 0, done.stdout
    assert "AIPC_API_KEY: set" in done.stdout and "Hugging Face token: set" in done.stdout
    assert "very-secret-value" not in done.stdout + done.stderr and "hf_also_secret" not in done.stdout


def test_json(demo_models: Path, tmp_path: Path) -> None:
    good = run("doctor", tmp_path, "--demo", "--port", str(free_port()), "--json")
    report: dict[str, Any] = json.loads(good.stdout)
    assert good.returncode == 0 and report["would_start"] is True and report["problems"] == []
    assert {c["section"] for c in report["checks"]} >= {"versions", "settings", "devices", "models", "storage", "port",
                                                         "keys"}
    assert [(m["role"], m["via"], m["present"]) for m in report["models"]] == [
        ("llm", "demo", True), ("image", "demo", True), ("embedding", "none", None)]
    bad = run("doctor", tmp_path, "--demo", "--json", env={"AIPC_LLM_PATH": str(tmp_path / "missing")})
    report = json.loads(bad.stdout)
    assert bad.returncode == 1 and report["would_start"] is False and len(report["problems"]) == 1
    assert "AIPC_LLM_PATH" in report["problems"][0]


def test_models_lists_what_each_role_serves(smollm2: Path, demo_models: Path, tmp_path: Path) -> None:
    env = {"AIPC_LLM_PATH": str(smollm2), "AIPC_EMBEDDING_PATH": str(tmp_path / "no-embedder")}
    done = run("models", tmp_path, "--demo", env=env)
    assert done.returncode == 0, done.stderr
    llm = next(line for line in done.stdout.splitlines() if line.startswith("llm "))
    assert llm.split()[:3] == ["llm", "yes", smollm2.stem] and "from AIPC_LLM_PATH" in llm, done.stdout
    assert str(smollm2) in done.stdout
    image = next(line for line in done.stdout.splitlines() if line.startswith("image "))
    assert image.split()[:3] == ["image", "yes", "aipc-demo-sd15"] and "--demo" in image, done.stdout
    embedding = next(line for line in done.stdout.splitlines() if line.startswith("embedding "))
    assert embedding.split()[:3] == ["embedding", "no", "no-embedder"], done.stdout

    rows = json.loads(run("models", tmp_path, "--json", env=env).stdout)
    served = {row["role"]: row for row in rows if row["source"] == "served"}
    assert served["llm"]["origin"] == "AIPC_LLM_PATH" and served["llm"]["path"] == str(smollm2)
    assert served["llm"]["present"] is True and served["llm"]["via"] == "path"
    assert served["image"]["via"] == "repo" and served["image"]["present"] is False  # no --demo: the hub model
    assert "aipc-chat download --kind image" in served["image"]["fix"]


def test_models_shows_remote_and_switched_off_roles(tmp_path: Path) -> None:
    done = run("models", tmp_path, env={"AIPC_LLM_ENDPOINT": "http://127.0.0.1:9/v1", "AIPC_IMAGE_REPO": "none"})
    assert done.returncode == 0, done.stderr
    llm = next(line for line in done.stdout.splitlines() if line.startswith("llm "))
    assert llm.split()[:2] == ["llm", "remote"] and "from AIPC_LLM_ENDPOINT" in llm, done.stdout
    image = next(line for line in done.stdout.splitlines() if line.startswith("image "))
    assert image.split()[:2] == ["image", "-"] and "AIPC_IMAGE_REPO=none" in image, done.stdout
