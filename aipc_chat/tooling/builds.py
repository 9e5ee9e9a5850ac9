"""What the offline model builders (demo and benchmark models) share: atomic publishing and tokenizer checks."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aipc_chat.errors import DemoModelError
from aipc_chat.provision.convert import forget_quantization_source


@contextmanager
def staging_folder(out_dir: Path, what: str) -> Iterator[Path]:
    """A fresh sibling folder of ``out_dir`` to build ``what`` in, removed afterwards whatever happens (publish it
    with ``move_into_place`` inside the block). Errors other than DemoModelError become one naming ``what``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp creates 0700; the published folder should be an ordinary one
        yield staging
    except DemoModelError:
        raise
    except Exception as exc:
        raise DemoModelError(f"building {what} in {out_dir} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_replaceable(out_dir: Path, marker_name: str, what: str) -> None:
    """Raise DemoModelError if ``out_dir`` holds something other than an (old or partial) build of ours."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    is_plain_dir = out_dir.is_dir() and not out_dir.is_symlink()
    if is_plain_dir and ((out_dir / marker_name).is_file() or not any(out_dir.iterdir())):
        return
    raise DemoModelError(f"refusing to replace {out_dir}: it exists and is not a {what} folder")


def move_into_place(staging: Path, out_dir: Path, marker_name: str, what: str) -> None:
    """Rename ``staging`` to ``out_dir``, replacing (then deleting) a previous build; never half a model."""
    ensure_replaceable(out_dir, marker_name, what)
    old: Path | None = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_chat_tokenizer(folder: Path, chat_template: str, think_tags: tuple[str, str]) -> dict[str, int]:
    """Check the OpenVINO tokenizer carries the chat template and round-trips the think tags; return token ids."""
    import openvino_genai as ov_genai

    tokenizer = ov_genai.Tokenizer(str(folder))
    if tokenizer.chat_template != chat_template:
        raise DemoModelError(f"OpenVINO tokenizer chat template differs: {tokenizer.chat_template!r}")
    ids = {"bos": tokenizer.get_bos_token_id(), "eos": tokenizer.get_eos_token_id(),
           "pad": tokenizer.get_pad_token_id()}
    for name, text in zip(("think_open", "think_close"), think_tags, strict=True):
        encoded = [int(t) for t in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]
        if len(encoded) != 1 or tokenizer.decode(encoded) != text:
            raise DemoModelError(f"{text} is not one token that decodes to itself: {encoded}")
        ids[name] = encoded[0]
    return ids


def require_files(folder: Path, names: list[str]) -> None:
    """Raise DemoModelError naming whatever of ``names`` an export did not write."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DemoModelError(f"OpenVINO export is missing {', '.join(missing)}")


def qwen2_byte_level(tok: Any, split_regex: str) -> Any:
    """Give a ``tokenizers.Tokenizer`` Qwen2's pipeline: NFC, the Qwen2 split regex, byte-level pieces."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def finish_llm_export(src: Path, dst: Path, tokenizer: Any) -> None:
    """After optimum wrote the LLM IR: copy the tokenizer files, forget the source path, add tokenizer IR."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    forget_quantization_source(dst / "openvino_config.json")
    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tokenizer, dst / "openvino_tokenizer.xml")
    ov.save_model(ov_detokenizer, dst / "openvino_detokenizer.xml")
