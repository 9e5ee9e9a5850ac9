"""Model cards: the parameter count from a config's shape, and the card of an IR folder."""

from __future__ import annotations

from pathlib import Path

from aipc_chat.provision.card import count_parameters, model_card

R1_DISTILL_1_5B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
                   "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                   "tie_word_embeddings": False}


def test_the_distill_1_5b_count_matches_its_weights() -> None:
    assert count_parameters(R1_DISTILL_1_5B) == 1_777_088_000  # what transformers counts for the same config
    assert count_parameters({**R1_DISTILL_1_5B, "tie_word_embeddings": True}) == 1_777_088_000 - 151936 * 1536
    assert count_parameters({"model_type": "qwen2"}) is None


def test_an_ir_folder_card(demo_models: Path) -> None:
    card = model_card(demo_models / "llm")
    assert (card.format, card.family, card.quantization) == ("openvino", "qwen2", "INT4")
    assert card.size_bytes > 0 and len(card.digest) == 64 and card.parameter_size.endswith(("M", "B"))
    assert card.info["general.architecture"] == "qwen2" and card.info["qwen2.context_length"] == 4096
    assert model_card(demo_models / "llm") is card  # read once per file version
