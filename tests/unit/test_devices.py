"""Device validation and AUTO, and the NPU configuration the engines produce (no NPU here: configuration only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipc_chat.engines.contract import ImageParams
from aipc_chat.engines.image import local_image_engine
from aipc_chat.engines.llm import device_properties, kv_bytes_per_token, scheduler_config
from aipc_chat.errors import InvalidRequest, ModelSetupError
from aipc_chat.provision.devices import available_devices, resolve_device
from aipc_chat.provision.resolve import choose_model
from aipc_chat.settings import Settings

LAPTOP = ["CPU", "GPU", "NPU"]


@pytest.mark.parametrize(
    ("requested", "available", "kind", "expected"),
    [
        ("CPU", ["CPU"], "llm", "CPU"),
        ("GPU", LAPTOP, "llm", "GPU"),
        ("GPU", ["CPU", "GPU.0", "GPU.1"], "image", "GPU"),
        ("GPU.1", ["CPU", "GPU.0", "GPU.1"], "image", "GPU.1"),
        ("NPU", LAPTOP, "llm", "NPU"),
        ("AUTO", LAPTOP, "llm", "GPU"),
        ("AUTO", ["CPU", "NPU"], "image", "CPU"),
        ("AUTO", ["CPU"], "llm", "CPU"),
        ("AUTO:NPU,CPU", LAPTOP, "llm", "NPU"),
    ],
)
def test_resolve(requested: str, available: list[str], kind: str, expected: str) -> None:
    assert resolve_device(requested, available, kind) == expected  # type: ignore[arg-type]


def test_missing_device_lists_what_exists() -> None:
    with pytest.raises(ModelSetupError, match=r"AIPC_LLM_DEVICE=NPU.*only CPU, GPU\.0"):
        resolve_device("NPU", ["CPU", "GPU.0"], "llm")
    with pytest.raises(ModelSetupError, match="GPU.3"):
        resolve_device("GPU.3", ["CPU", "GPU.0"], "image")


def test_this_machine_has_a_cpu() -> None:
    assert "CPU" in available_devices()


def test_npu_llm_properties_and_compile_cache(tmp_path: Path) -> None:
    s = Settings(models_dir=tmp_path, npu_max_prompt_len=2048, npu_min_response_len=512)
    npu = device_properties(s, "NPU")
    assert npu["MAX_PROMPT_LEN"] == 2048 and npu["MIN_RESPONSE_LEN"] == 512
    assert npu["CACHE_DIR"] == str(tmp_path / "ov_cache" / "llm")
    assert "MAX_PROMPT_LEN" not in device_properties(s, "CPU")
    assert device_properties(s, "CPU")["CPU_RUNTIME_CACHE_CAPACITY"] == 16  # bounded per-shape executors
    assert "CPU_RUNTIME_CACHE_CAPACITY" not in device_properties(s, "GPU")
    cfg = scheduler_config(Settings(kv_cache_gb=3, max_num_seqs=8, prefix_caching=False))
    assert (cfg.cache_size, cfg.max_num_seqs, cfg.enable_prefix_caching) == (3, 8, False)


QWEN_1_5B = {"num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_size": 1536}
DEMO = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128}


def test_the_kv_cache_is_capped_at_what_full_contexts_need() -> None:
    assert kv_bytes_per_token(QWEN_1_5B) == 2 * 28 * 2 * 128 * 4 and kv_bytes_per_token({"hidden_size": 8}) is None
    settings = Settings(kv_cache_gb=1, max_num_seqs=16)
    big = scheduler_config(settings, 32768, kv_bytes_per_token(QWEN_1_5B))  # 16 x 32k tokens need far more
    assert (big.cache_size, big.num_kv_blocks) == (1, 0)
    small = scheduler_config(settings, 4096, kv_bytes_per_token(DEMO))  # 16 x 4096 tokens fit in a few MB
    assert (small.cache_size, small.num_kv_blocks) == (0, 16 * 4096 // 32)
    assert scheduler_config(settings, 4096, kv_bytes_per_token(DEMO), "GPU.1").num_kv_blocks == 16 * 4096 // 16
    assert scheduler_config(settings, 4096, None).cache_size == 1  # unknown shape: the configured size


def test_npu_uses_the_channel_wise_llm_variant_by_default() -> None:
    assert choose_model(Settings(llm_device="NPU"), "llm").repo == "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-cw-ov"
    assert choose_model(Settings(llm_device="GPU"), "llm").repo == "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-ov"
    assert choose_model(Settings(llm_device="NPU", llm_repo="me/mine"), "llm").repo == "me/mine"


def test_npu_image_engine_takes_only_its_static_size(tmp_path: Path) -> None:
    engine = local_image_engine(Settings(data_dir=tmp_path, npu_image_width=512, npu_image_height=384), tmp_path,
                                "m", "NPU")
    assert engine.renderer.static_size == (512, 384)  # type: ignore[attr-defined]
    engine.check(ImageParams(prompt="x", width=512, height=384))
    with pytest.raises(InvalidRequest, match="compiled for 512x384"):
        engine.check(ImageParams(prompt="x", width=512, height=512))


def test_genai_image_compile_plan_per_device(tmp_path: Path) -> None:
    from aipc_chat.engines.image_genai import compile_plan

    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", npu_image_width=512, npu_image_height=384)
    npu, gpu = compile_plan(settings, "NPU"), compile_plan(settings, "GPU")
    assert npu.static == (512, 384, 7.5) and npu.device == "NPU"  # one static shape, reshaped before compiling
    assert gpu.static is None and gpu.device == "GPU"
    assert npu.properties == gpu.properties == {"CACHE_DIR": str(tmp_path / "cache" / "image")}
