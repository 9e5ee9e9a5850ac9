"""Converting tiny Hugging Face models, made here, to OpenVINO with optimum-intel; the results load and generate."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from aipc_chat.errors import ConversionFailed, HubUnreachable, ModelSetupError
from aipc_chat.provision.convert import convert_model, pick_group_size
from aipc_chat.provision.hub import list_models, read_manifest, verify_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_llm(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Qwen2ForCausalLM (hidden 64: INT4 group 128 does not fit) with the demo LLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    src = tmp_path_factory.mktemp("hf") / "tiny-qwen2"
    tokenizer = AutoTokenizer.from_pretrained(demo_models / "llm")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(src)
    tokenizer.save_pretrained(src)
    return src


@pytest.fixture(scope="module")
def tiny_sd(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Stable Diffusion pipeline of the SD 1.5 kind (two levels per model) in diffusers format."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    src = tmp_path_factory.mktemp("hf") / "tiny-sd"
    tokenizer = CLIPTokenizer.from_pretrained(demo_models / "image" / "tokenizer")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, cross_attention_dim=16, attention_head_dim=2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), norm_num_groups=4, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(src)
    return src


def weight_types(xml: Path) -> set[str]:
    """The element types of the IR's constants (weights)."""
    text = xml.read_text(encoding="utf-8")
    return set(re.findall(r'<layer id="\d+" name="[^"]*" type="Const"[^>]*>\s*<data element_type="(\w+)"', text))


def test_llm_to_int4_loads_and_generates(tiny_llm: Path, tmp_path: Path) -> None:
    out = convert_model(str(tiny_llm), "llm", tmp_path)

    assert out == tmp_path / "converted" / "tiny-qwen2-int4-ov"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging folder left behind
    manifest = read_manifest(out)
    assert manifest is not None and manifest["kind"] == "llm" and manifest["weight_format"] == "int4"
    assert manifest["quantization"] == {"bits": 4, "sym": True, "group_size": 64, "ratio": 1.0, "all_layers": True}
    assert verify_manifest(out, full=True) == []
    assert {"u4", "i4"} & weight_types(out / "openvino_model.xml")
    assert (out / "openvino_tokenizer.xml").is_file() and (out / "openvino_detokenizer.xml").is_file()

    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(out), "CPU")
    result = pipe.generate(["Hello, who are you?"], max_new_tokens=6, do_sample=False)
    assert len(result.texts) == 1
    assert pipe.get_tokenizer().chat_template  # the template travelled into the tokenizer IR
    (row,) = (r for r in list_models(tmp_path) if r["source"] == "converted")
    assert row["name"] == out.name and row["kind"] == "llm" and row["verified"]


@pytest.mark.parametrize(("weight_format", "stored"), [("fp16", {"f16"}), ("int8", {"u8", "i8"})])
def test_stable_diffusion_loads_and_generates(tiny_sd: Path, tmp_path: Path, weight_format: str | None,
                                              stored: set[str]) -> None:
    out = convert_model(str(tiny_sd), "image", tmp_path, weight_format=weight_format)

    assert out.name == f"tiny-sd-{weight_format}-ov"
    assert verify_manifest(out, full=True) == []
    assert stored & weight_types(out / "unet" / "openvino_model.xml")
    assert (out / "tokenizer" / "openvino_tokenizer.xml").is_file()

    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(out, device="CPU")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a cat", width=64, height=64, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and float(np.std(image)) > 0


def test_bad_requests_fail_before_any_export(tiny_llm: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSetupError, match="neither a model folder nor a hub id"):
        convert_model(str(tmp_path / "nowhere"), "llm", tmp_path)
    with pytest.raises(ModelSetupError, match="'int3' is not one of int4, int8, fp16"):
        convert_model(str(tiny_llm), "llm", tmp_path, weight_format="int3")
    with pytest.raises(ModelSetupError, match=r"group size 48 does not divide the layer widths \[64, 192\].*e.g. 64"):
        convert_model(str(tiny_llm), "llm", tmp_path, group_size=48)
    (tmp_path / "converted" / "taken").mkdir(parents=True)
    with pytest.raises(ModelSetupError, match="already exists.*--force"):
        convert_model(str(tiny_llm), "llm", tmp_path, name="taken")
    with pytest.raises(ModelSetupError, match="not a usable folder name"):
        convert_model(str(tiny_llm), "llm", tmp_path, name="../escape")
    assert [p.name for p in (tmp_path / "converted").iterdir()] == ["taken"]


def test_a_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "not-a-model"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "no-such-architecture"}', encoding="utf-8")

    with pytest.raises(ConversionFailed, match="converting .*not-a-model"):
        convert_model(str(src), "llm", tmp_path / "models")

    assert list((tmp_path / "models" / "converted").iterdir()) == []


def test_a_hub_id_offline_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(HubUnreachable, match=r"hf download acme/tiny-llm --local-dir DIR.*aipc-chat convert DIR"):
        convert_model("acme/tiny-llm", "llm", tmp_path)


@pytest.mark.parametrize(
    ("widths", "requested", "chosen"),
    [([1536, 8960], None, 128), ([64, 192], None, 64), ([96, 160], None, 32), ([100], None, -1), ([64], 32, 32)],
)
def test_group_size_divides_every_width(widths: list[int], requested: int | None, chosen: int) -> None:
    assert pick_group_size(widths, requested) == chosen
