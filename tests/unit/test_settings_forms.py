"""What people type into settings (issue #30): sizes and durations in the forms common tools use, log levels in any
case, paths checked for their kind, one readable line per refused value, and the closest name for a misspelt one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from aipc_chat.errors import ModelSetupError
from aipc_chat.provision.resolve import check_present, choose_model, missing_message, missing_models
from aipc_chat.settings import (
    Settings,
    env_name,
    parse_bytes,
    parse_duration,
    problem_lines,
    source_checkout,
    unknown_settings,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("300", 300.0), ("0", 0.0), ("1.5", 1.5), ("300s", 300.0), ("5m", 300.0), ("5min", 300.0), ("5 mins", 300.0),
    ("2h", 7200.0), ("1d", 86400.0), ("1h30m", 5400.0), ("1h2m3s", 3723.0), ("500ms", 0.5), ("1.5h", 5400.0),
    ("2m30.5s", 150.5), (" 30S ", 30.0), ("100us", 1e-4), ("-1", None), ("-5m", None), ("-0", 0.0)])
def test_durations(text: str, seconds: float | None) -> None:
    got = parse_duration(text)
    assert got == seconds if seconds is None else got is not None and math.isclose(got, seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes please", "m5", "1x", "5m-3s", "inf", "nan", "--1", "1h 30"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("1024", 1024), ("8G", 8 * 2**30), ("8GB", 8 * 10**9), ("8GiB", 8 * 2**30), ("8gi", 8 * 2**30),
    ("512MB", 512 * 10**6), ("512M", 512 * 2**20), ("1.5g", round(1.5 * 2**30)), ("20MiB", 20 * 2**20),
    (" 800 mb ", 800 * 10**6), ("2kb", 2000), ("1T", 2**40), ("64b", 64)])
def test_sizes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "lots", "8 gigs", "8XB", "-1G", "G8", "1.2.3G"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes(text)


def test_every_size_and_duration_field_takes_the_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AIPC_KEEP_ALIVE": "5min", "AIPC_MEMORY_LIMIT": "8G", "AIPC_LOG_LEVEL": "DEBUG",
                        "AIPC_REQUEST_TIMEOUT": "1h", "AIPC_MAX_BODY_BYTES": "32MB", "AIPC_KV_CACHE_GB": "2GiB",
                        "AIPC_MIN_FREE_MB": "1GB", "AIPC_BATCH_WINDOW_MS": "10ms", "AIPC_LLM_DEVICE": "gpu.1"}.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.keep_alive_seconds, s.memory_limit_bytes, s.log_level) == (300.0, 8 * 2**30, "debug")
    assert (s.request_timeout, s.max_body_bytes, s.kv_cache_gb, s.min_free_mb) == (3600.0, 32 * 10**6, 2, 1000)
    assert (s.batch_window_ms, s.llm_device) == (10.0, "GPU.1")
    assert Settings(kv_cache_gb="2GB", min_free_mb=300, batch_window_ms=5, log_level="Warn").kv_cache_gb == 2
    assert Settings(log_level="Info").log_level == "info" and Settings(keep_alive="-1").keep_alive_seconds is None


def test_the_default_body_limit_takes_a_phone_photo_in_base64() -> None:
    photo = 8 * 10**6  # the large end of a 12 MP JPEG
    assert Settings().max_body_bytes >= photo * 4 / 3 + 64 * 1024  # base64 and the JSON around it


def refused(**values: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    return problem_lines(caught.value, environ={})


def test_a_refusal_names_the_variable_and_the_accepted_forms() -> None:
    [line] = refused(keep_alive="soon")
    assert line.startswith("AIPC_KEEP_ALIVE='soon': not a duration; use ")
    assert all(form in line for form in ("300", "5min", "1h30m", "500ms", "-1"))
    assert "^" not in line and "pattern" not in line  # no regular expression shown
    [line] = refused(memory_limit="8 gigs")
    assert line.startswith("AIPC_MEMORY_LIMIT='8 gigs': not a size") and "8GiB" in line and "512MB" in line
    [line] = refused(request_timeout="-1")
    assert "AIPC_REQUEST_TIMEOUT" in line and "forever" in line
    with pytest.raises(ValidationError) as caught:
        Settings(request_timeout="2h")
    [line] = problem_lines(caught.value, environ={"AIPC_REQUEST_TIMEOUT": "2h"})  # as typed, not as parsed
    assert line == "AIPC_REQUEST_TIMEOUT='2h': must be at most 3600 seconds"
    [line] = refused(kv_cache_gb="1.5GB")
    assert "whole GB" in line
    [line] = refused(log_level="loud")
    assert line.startswith("AIPC_LOG_LEVEL='loud': takes debug, info, warning, error")


def test_one_line_per_bad_setting_and_the_seed_name_when_that_was_set() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(port="x", demo="maybe", llm_device="tpu", max_body_bytes=10)  # type: ignore[arg-type]
    lines = problem_lines(caught.value, environ={"USE_MOCKS": "maybe"})
    assert lines == ["AIPC_PORT='x': takes a whole number",
                     "AIPC_MAX_BODY_BYTES=10: must be at least 1024 bytes",
                     "USE_MOCKS='maybe': takes true or false (also 1/0, yes/no, on/off)",
                     "AIPC_LLM_DEVICE='tpu': takes CPU, GPU (GPU.0, GPU.1, ...), NPU or AUTO (AUTO:GPU,CPU), in any "
                     "case"]
    assert env_name("request_timeout", {"REQUEST_TIMEOUT": "1"}) == "REQUEST_TIMEOUT"
    assert env_name("request_timeout", {}) == "AIPC_REQUEST_TIMEOUT"


def test_a_secret_is_never_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(api_key="sk-secret", users_file=Path("users.txt"))
    assert "sk-secret" not in " ".join(problem_lines(caught.value, environ={}))


def test_paths_are_checked_for_their_kind(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    [line] = refused(llm_path=text)
    assert line.startswith(f"AIPC_LLM_PATH='{text}': a file, but not a .gguf file")
    assert "not a .gguf file" in line and "OpenVINO IR folder" in line and ".gguf file" in line
    (tmp_path / "model.gguf").mkdir()
    assert "a folder named like a .gguf file" in refused(llm_path=tmp_path / "model.gguf")[0]
    for field in ("models_dir", "data_dir", "image_path", "embedding_path", "demo_dir", "cache_dir"):
        [line] = refused(**{field: text})
        assert line.startswith(f"AIPC_{field.upper()}") and "takes a folder" in line
    [line] = refused(system_prompt_file=tmp_path)
    assert line.startswith("AIPC_SYSTEM_PROMPT_FILE") and "takes a text file" in line
    assert Settings(llm_path=tmp_path / "absent.gguf", models_dir=tmp_path / "new").llm_path  # missing: checked later
    assert Settings(llm_path="~/x.gguf").llm_path == Path.home() / "x.gguf"


@pytest.mark.parametrize(("name", "closest"), [
    ("AIPC_KEEP_ALVE", "AIPC_KEEP_ALIVE"), ("AIPC_LOGLEVEL", "AIPC_LOG_LEVEL"), ("AIPC_MODEL_DIR", "AIPC_MODELS_DIR"),
    ("aipc_memory_limt", "AIPC_MEMORY_LIMIT"), ("AIPC_LLM_ENDPOINT_KEY", "AIPC_LLM_ENDPOINT_API_KEY")])
def test_a_misspelt_variable_gets_the_closest_setting(name: str, closest: str) -> None:
    assert unknown_settings({name: "1"}) == [f"{name} is not a setting; did you mean {closest}?"]


def test_an_old_name_under_the_new_prefix_gets_its_new_name() -> None:
    assert unknown_settings({"AIPC_DEEPSEEK_ENDPOINT": "http://x"}) == [
        "AIPC_DEEPSEEK_ENDPOINT is not a setting; did you mean AIPC_LLM_ENDPOINT (the old name DEEPSEEK_ENDPOINT)?"]


def test_known_names_and_other_variables_are_not_warned_about() -> None:
    known = {"AIPC_KEEP_ALIVE": "5m", "aipc_port": "1", "AIPC_HF_TOKEN": "x", "HF_TOKEN": "x", "PATH": "/bin",
             "USE_MOCKS": "1", "AIPC_TEST_MODELS_DIR": "/m"}
    assert unknown_settings(known) == []
    [warning] = unknown_settings({"AIPC_FROBNICATE": "1"})
    assert warning.startswith("AIPC_FROBNICATE is not a setting; it is ignored")
    assert unknown_settings({}, ["AIPC_PROT"]) == ["AIPC_PROT is not a setting; did you mean AIPC_PORT?"]


def test_a_source_checkout_is_recognised_only_at_its_root(tmp_path: Path) -> None:
    assert source_checkout(tmp_path) is None
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / ".gitkeep").touch()
    assert source_checkout(tmp_path) is None  # no pyproject
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert source_checkout(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "aipc-chat"\nversion = "0.1.0"\n')
    assert source_checkout(tmp_path) == tmp_path.resolve()
    assert source_checkout(tmp_path / "models") is None
    repo = Path(__file__).resolve().parents[2]
    assert source_checkout(repo) == repo and source_checkout(repo / "aipc_chat") is None


def test_every_missing_model_is_listed_with_what_fetches_it(tmp_path: Path) -> None:
    s = Settings(models_dir=tmp_path)
    missing = missing_models(s)
    assert [(m.role, m.fetch) for m in missing] == [("llm", f"aipc-chat download --kind llm --models-dir {tmp_path}"),
                                                    ("image", f"aipc-chat download --kind image --models-dir "
                                                              f"{tmp_path}")]
    text = missing_message(missing)
    assert text.startswith("2 models are missing: the llm model OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-ov@main")
    assert "OpenVINO/stable-diffusion-v1-5-int8-ov@main" in text and "aipc-chat serve --demo" in text
    offline = missing_message(missing, hub_problem="the Hugging Face hub at http://h cannot be reached (x)")
    ways_out, once = offline.index("Without the hub"), offline.index("Once the hub answers")  # no download first
    assert ways_out < offline.index("aipc-chat serve --demo") < offline.index("AIPC_LLM_PATH") < once
    assert once < offline.index("`aipc-chat download --kind llm") < offline.index("`aipc-chat download --kind image")
    assert "aipc-chat download --kind" not in offline[:once]


def test_missing_local_models_name_their_setting(tmp_path: Path) -> None:
    s = Settings(models_dir=tmp_path, llm_path=tmp_path / "absent", image_path=tmp_path)
    [llm, image] = missing_models(s)
    assert (llm.role, llm.where_from, llm.problem, llm.fetch) == ("llm", "AIPC_LLM_PATH", "does not exist", None)
    assert "point AIPC_LLM_PATH at an OpenVINO IR folder" in llm.remedy and ".gguf" in llm.remedy
    assert image.problem.startswith("is incomplete (missing: model_index.json")
    assert missing_models(Settings(models_dir=tmp_path, demo=True)) == []  # the shipped demo models are there
    with pytest.raises(ModelSetupError, match="demo-models --only image"):
        check_present(choose_model(Settings(models_dir=tmp_path, demo=True, demo_dir=tmp_path / "d"), "image"))
