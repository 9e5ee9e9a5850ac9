"""Settings: the AIPC_ names, the seed's aliases and model resolution order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from aipc_chat.errors import ModelSetupError
from aipc_chat.provision.resolve import check_present, choose_model
from aipc_chat.settings import DEFAULT_IMAGE_REPO, DEFAULT_LLM_REPO, SHIPPED_DEMO_DIR, Settings, user_folder


def test_defaults(tmp_path: Path) -> None:
    s = Settings()
    assert (s.host, s.port, s.demo, s.auto_download_models) == ("127.0.0.1", 8000, False, True)
    user = user_folder()
    assert (s.models_dir, s.data_dir) == (user / "models", user / "data")
    if sys.platform.startswith("linux"):  # XDG_DATA_HOME points at the test's own folder (tests/conftest.py)
        assert user == tmp_path / "xdg" / "aipc-chat"
    assert s.compile_cache_dir == user / "models" / "ov_cache"
    assert (s.llm_repo, s.image_repo) == (DEFAULT_LLM_REPO, DEFAULT_IMAGE_REPO)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ("USE_MOCKS", "demo", True),
        ("AIPC_DEMO", "demo", True),
        ("AUTO_DOWNLOAD_MODELS", "auto_download_models", False),
        ("MODELS_CACHE_DIR", "models_dir", Path("/srv/m")),
        ("AIPC_MODELS_DIR", "models_dir", Path("/srv/m")),
        ("DEEPSEEK_REPO_ID", "llm_repo", "me/llm"),
        ("STABLE_DIFFUSION_REPO_ID", "image_repo", "me/sd"),
        ("DEEPSEEK_ENDPOINT", "llm_endpoint", "http://h:8000/v1"),
        ("STABLE_DIFFUSION_ENDPOINT", "image_endpoint", "http://h:7860"),
        ("REQUEST_TIMEOUT", "request_timeout", 12.5),
        ("CONVERSATION_HISTORY_LIMIT", "conversation_history_limit", 3),
    ],
)
def test_seed_and_prefixed_names(monkeypatch: pytest.MonkeyPatch, env: str, field: str, expected: object) -> None:
    raw = {True: "1", False: "0"}.get(expected, str(expected)) if isinstance(expected, bool) else str(expected)
    monkeypatch.setenv(env, raw)
    assert getattr(Settings(), field) == expected


def test_hf_token_aliases_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUGGINGFACE_TOKEN", "hf_abc")
    s = Settings()
    assert s.hf_token is not None and s.hf_token.get_secret_value() == "hf_abc"
    assert "hf_abc" not in repr(s)


def test_device_is_validated_and_normalised() -> None:
    assert Settings(llm_device="gpu.1").llm_device == "GPU.1"
    with pytest.raises(ValidationError):
        Settings(llm_device="TPU")


def test_resolution_order(tmp_path: Path) -> None:
    s = Settings(models_dir=tmp_path)
    assert choose_model(s, "llm").source == "repo"
    assert choose_model(s, "llm").path == tmp_path / "hub" / "OpenVINO--DeepSeek-R1-Distill-Qwen-1.5B-int4-ov" / "main"
    s = Settings(models_dir=tmp_path, demo=True)
    assert choose_model(s, "image").source == "demo"
    assert choose_model(s, "image").path == SHIPPED_DEMO_DIR / "image"  # shipped built with the package
    assert (SHIPPED_DEMO_DIR / "image" / "model_index.json").is_file()
    assert (SHIPPED_DEMO_DIR / "llm" / "openvino_model.xml").is_file()
    assert choose_model(Settings(demo=True, demo_dir=tmp_path / "d"), "llm").path == tmp_path / "d" / "llm"
    s = Settings(models_dir=tmp_path, demo=True, llm_path=tmp_path / "mine")
    assert choose_model(s, "llm").source == "path"
    assert choose_model(s, "image").source == "demo"
    s = Settings(models_dir=tmp_path, demo=True, llm_path=tmp_path / "mine", llm_endpoint="http://x/v1/")
    assert choose_model(s, "llm").source == "remote"
    assert choose_model(s, "llm").endpoint == "http://x/v1"


def test_missing_model_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelSetupError, match="aipc-chat download"):
        check_present(choose_model(Settings(models_dir=tmp_path), "llm"))
    with pytest.raises(ModelSetupError, match="demo-models"):
        check_present(choose_model(Settings(models_dir=tmp_path, demo=True, demo_dir=tmp_path / "none"), "image"))
