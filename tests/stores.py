"""A model store laid out as Ollama's, for the tests of `ollama:NAME`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def ollama_store(root: Path, blob_source: Path, name: str = "library/tiny", tag: str = "latest") -> Path:
    """A store laid out as Ollama's: a manifest naming a config, the model blob and a template."""
    store = root / "ollama"
    data = blob_source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = store / "manifests" / "registry.ollama.ai" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64}, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64, "size": 10},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]}))
    return store
