"""GGUF models: what openvino-genai can run, their metadata, and the ones already in Ollama's store.

openvino-genai loads a ``.gguf`` file directly (its default GGUF reader): tokenizer, detokenizer and chat template
come from the file. It builds these architectures from these tensor types; anything else is refused here, before
loading, with a sentence saying what to use instead.

Ollama keeps models as content-addressed blobs (``<store>/blobs/sha256-<hex>``) named by manifests
(``<store>/manifests/registry.ollama.ai/library/<name>/<tag>``, JSON whose ``layers`` include one of media type
``application/vnd.ollama.image.model``: the GGUF). ``ollama:NAME[:TAG]`` serves one by name; as openvino-genai
only opens files named ``*.gguf``, the blob is linked (not copied, where the file system allows) into
``<models>/ollama/``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc_chat.errors import ModelSetupError

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2", "qwen3")
TENSOR_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q8_0")  # Q4_K_M files mix Q4_K and Q6_K
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
OLLAMA_PREFIX = "ollama:"


@dataclass(frozen=True)
class GGUFInfo:
    """What the server needs to know of a GGUF file before loading it."""

    path: Path
    architecture: str
    name: str | None
    tensor_types: tuple[str, ...]  # distinct, in order of first appearance
    config: dict[str, Any]  # config.json's keys the engine reads (layers, heads, context, vocabulary)
    chat_template: str | None
    parameters: int | None = None  # the tensors' elements

    @property
    def quantization(self) -> str:
        """The tensor types, quantized ones first (``Q4_K+Q6_K+F32``)."""
        return "+".join(sorted(self.tensor_types, key=lambda t: (t.startswith("F"), t)))

    def problem(self) -> str | None:
        """Why openvino-genai cannot run this file, or None."""
        if self.architecture not in ARCHITECTURES:
            return (f"its architecture '{self.architecture}' is not one openvino-genai builds from GGUF "
                    f"({', '.join(ARCHITECTURES)})")
        unsupported = [t for t in self.tensor_types if t not in TENSOR_TYPES]
        if unsupported:
            return (f"it holds {', '.join(unsupported)} tensors, which openvino-genai does not read from GGUF "
                    f"(it reads {', '.join(TENSOR_TYPES)}: use a Q4_0, Q4_K_M or Q8_0 file)")
        return None


def read_gguf(path: Path) -> GGUFInfo:
    """The metadata of a GGUF file (memory-mapped; nothing is loaded); ModelSetupError if it is not one.

    Parsing takes seconds (the tokenizer's arrays are read field by field), and start-up asks several times (the
    check, the pipeline factory, the engine): one parse per file version is kept.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelSetupError(f"{path} cannot be read ({exc.strerror or exc}).") from None
    return _read_gguf(path.resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_gguf(path: Path, mtime_ns: int, size: int) -> GGUFInfo:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"{path} is not a GGUF file openvino-genai can read ({exc}).") from None

    def field(key: str) -> Any:
        item = reader.fields.get(key)
        if item is None:
            return None
        try:
            return item.contents()
        except (ValueError, IndexError):
            return None

    arch = str(field("general.architecture") or "unknown")
    heads = field(f"{arch}.attention.head_count")
    tokens = field("tokenizer.ggml.tokens")
    config = {
        "model_type": arch,
        "num_hidden_layers": field(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": field(f"{arch}.attention.head_count_kv") or heads,
        "hidden_size": field(f"{arch}.embedding_length"),
        "head_dim": field(f"{arch}.attention.key_length"),
        "max_position_embeddings": field(f"{arch}.context_length"),
        "vocab_size": field(f"{arch}.vocab_size") or (len(tokens) if isinstance(tokens, list) else None),
    }
    types = tuple(dict.fromkeys(t.tensor_type.name for t in reader.tensors))
    name = field("general.name")
    template = field("tokenizer.chat_template")
    return GGUFInfo(path, arch, str(name) if name else None, types, {k: v for k, v in config.items() if v},
                    str(template) if template else None, sum(int(t.n_elements) for t in reader.tensors))


def check_gguf(path: Path) -> GGUFInfo:
    """Read a GGUF file and refuse, in one sentence, what openvino-genai cannot run."""
    info = read_gguf(path)
    problem = info.problem()
    if problem is not None:
        raise ModelSetupError(f"The GGUF model {path.name} cannot be served: {problem}. Alternatively convert the "
                              "original model with `aipc-chat convert`.")
    return info


# ---------------------------------------------------------------------------------------------- Ollama's store


def ollama_store() -> Path:
    """Where Ollama keeps its models: ``OLLAMA_MODELS``, else ``~/.ollama/models``."""
    configured = os.environ.get("OLLAMA_MODELS")
    return Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"


def parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """``deepseek-r1:1.5b`` -> (registry, namespace, model, tag), as Ollama reads names (tag ``latest``)."""
    base, _, tag = name.partition(":")
    parts = base.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, "library", parts[0]]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    if len(parts) != 3 or not all(parts) or any(p in (".", "..") for p in (*parts, tag)):
        raise ModelSetupError(f"'{name}' is not an Ollama model name (NAME, NAME:TAG or NAMESPACE/NAME:TAG).")
    return parts[0], parts[1], parts[2], tag or "latest"


def display_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """The name Ollama shows: ``deepseek-r1:1.5b``, ``me/model:q4``, ``host/ns/model:tag``."""
    if registry == DEFAULT_REGISTRY:
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{registry}/{namespace}/{model}:{tag}"


def _model_blob(store: Path, manifest: Path) -> Path | None:
    """The GGUF blob a manifest names, or None."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for layer in data.get("layers") or []:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA_TYPE:
            digest = str(layer.get("digest", ""))
            if digest.startswith("sha256:"):
                return store / "blobs" / digest.replace(":", "-", 1)
    return None


def find_ollama_model(name: str, store: Path | None = None) -> Path:
    """The blob of an Ollama model by name; ModelSetupError saying what is there when it is not."""
    store = store or ollama_store()
    registry, namespace, model, tag = parse_ollama_name(name)
    manifest = store / "manifests" / registry / namespace / model / tag
    blob = _model_blob(store, manifest) if manifest.is_file() else None
    if blob is None or not blob.is_file():
        have = ", ".join(row["name"] for row in list_ollama_models(store)) or "none"
        raise ModelSetupError(f"Ollama's store {store} has no model '{name}' (models there: {have}). Pull it with "
                              f"`ollama pull {name}`, or set OLLAMA_MODELS to the store's folder.")
    return blob


def list_ollama_models(store: Path | None = None) -> list[dict[str, Any]]:
    """Every model in Ollama's store that has a GGUF blob: name, blob path and size."""
    store = store or ollama_store()
    rows: list[dict[str, Any]] = []
    root = store / "manifests"
    if not root.is_dir():
        return rows
    for manifest in sorted(p for p in root.glob("*/*/*/*") if p.is_file()):
        registry, namespace, model, tag = manifest.relative_to(root).parts
        blob = _model_blob(store, manifest)
        if blob is not None and blob.is_file():
            rows.append({"name": display_name(registry, namespace, model, tag), "path": blob,
                         "size_bytes": blob.stat().st_size})
    return rows


def describe_gguf(path: Path, source: str, name: str) -> dict[str, Any]:
    """A row of ``aipc-chat models`` for a GGUF file: its architecture, tensor types, and whether it can run."""
    try:
        info = read_gguf(path)
        problem = info.problem()
        extra: dict[str, Any] = {"architecture": info.architecture, "quantization": info.quantization}
    except ModelSetupError as exc:
        problem, extra = str(exc), {}
    serve = f"{OLLAMA_PREFIX}{name}" if source == "ollama" else str(path)
    return {"source": source, "name": name, "revision": None, "commit": None, "kind": "llm", "path": str(path),
            "files": 1, "size_bytes": path.stat().st_size, "verified": problem is None,
            "problems": [problem] if problem else [], "serve_with": f"AIPC_LLM_PATH={serve}", **extra}


def list_gguf_models(models_dir: Path, store: Path | None = None) -> list[dict[str, Any]]:
    """The GGUF files under ``models_dir`` (one folder deep, Ollama links aside) and the models in Ollama's store."""
    rows = [describe_gguf(path, "gguf", path.stem)
            for path in sorted(models_dir.glob("*/*.gguf")) if path.parent.name != "ollama" and path.is_file()]
    rows += [describe_gguf(row["path"], "ollama", row["name"]) for row in list_ollama_models(store)]
    return rows


def link_as_gguf(blob: Path, name: str, folder: Path) -> Path:
    """``<folder>/<name>.gguf`` pointing at ``blob``: a symbolic link, else a hard link, else a copy."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    target = folder / f"{safe}.gguf"
    with contextlib.suppress(OSError):
        if target.resolve(strict=True) == blob.resolve(strict=True) or (
                target.stat().st_ino == blob.stat().st_ino and target.stat().st_dev == blob.stat().st_dev):
            return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(blob)
    except OSError:  # Windows without the privilege, or a file system without links
        try:
            os.link(blob, tmp)
        except OSError:
            log.info("copying %s to %s (no link possible)", blob, target)
            shutil.copyfile(blob, tmp)
    os.replace(tmp, target)
    return target
