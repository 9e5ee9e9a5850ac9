"""What a served LLM is, as model listings describe it (Ollama's ``details`` and ``model_info``): format, family,
parameter count, quantization, size on disk, context length. Read from the files, once per file version."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc_chat.errors import ModelSetupError


@dataclass(frozen=True)
class ModelCard:
    """A model as listings describe it."""

    format: str  # "gguf" or "openvino"
    family: str  # the architecture: "qwen2", "llama", ...
    parameters: int | None
    quantization: str  # "INT4", "Q4_K", ...
    size_bytes: int
    modified: float  # seconds since the epoch
    digest: str  # sha256 hex of the model's identity (path, size, time): stable while the files are
    info: dict[str, Any]  # Ollama's model_info keys (general.*, <family>.*)

    @property
    def parameter_size(self) -> str:
        """``1.8B``, ``135M`` (Ollama's form); ``unknown`` when the shape is not known."""
        n = self.parameters
        if not n:
            return "unknown"
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def model_card(path: Path) -> ModelCard:
    """The card of a GGUF file or an OpenVINO IR folder."""
    stat_paths = [path] if path.is_file() else sorted(path.glob("*.bin")) + sorted(path.glob("*.xml"))
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime) for p in stat_paths if p.is_file())
    return _card(path, stats)


@functools.lru_cache(maxsize=8)
def _card(path: Path, stats: tuple[tuple[str, int, float], ...]) -> ModelCard:
    size = sum(s[1] for s in stats)
    modified = max((s[2] for s in stats), default=0.0)
    digest = hashlib.sha256(repr(stats).encode()).hexdigest()
    if path.suffix.lower() == ".gguf":
        from aipc_chat.provision.gguf import read_gguf

        try:
            info = read_gguf(path)
        except ModelSetupError:
            return ModelCard("gguf", "unknown", None, "unknown", size, modified, digest, {})
        config, family = info.config, info.architecture
        quantization = info.quantization.split("+")[0]
        fmt, parameters = "gguf", info.parameters
    else:
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        family = str(config.get("model_type", "unknown"))
        quantization = _ir_precision(path / "openvino_model.xml")
        fmt, parameters = "openvino", count_parameters(config)
    model_info: dict[str, Any] = {"general.architecture": family, "general.parameter_count": parameters,
                                  "general.file_type": quantization}
    for key, name in (("max_position_embeddings", "context_length"), ("hidden_size", "embedding_length"),
                      ("num_hidden_layers", "block_count"), ("num_attention_heads", "attention.head_count"),
                      ("num_key_value_heads", "attention.head_count_kv"), ("vocab_size", "vocab_size")):
        if isinstance(config.get(key), int):
            model_info[f"{family}.{name}"] = config[key]
    return ModelCard(fmt, family, parameters, quantization, size, modified, digest, model_info)


def count_parameters(config: dict[str, Any]) -> int | None:
    """A decoder-only transformer's parameter count from its shape (embeddings, attention, MLP, output head)."""
    try:
        vocab, hidden, layers = int(config["vocab_size"]), int(config["hidden_size"]), int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if config.get("model_type") == "qwen2" or config.get("attention_bias"):  # q, k and v carry biases
        attention += (heads + 2 * kv_heads) * head_dim
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    head = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return vocab * hidden + layers * per_layer + hidden + head


def _ir_precision(xml: Path) -> str:
    """The narrowest weight type in an IR (INT4, INT8, F16, F32)."""
    try:
        text = xml.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    types = set(re.findall(r'element_type="([a-z0-9]+)"', text))
    for names, label in ((("u4", "i4", "nf4"), "INT4"), (("u8", "i8"), "INT8"), (("f16", "bf16"), "F16")):
        if types & set(names):
            return label
    return "F32"
