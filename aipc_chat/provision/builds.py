"""What the offline model builders (demo and benchmark models) share: atomic publishing and tokenizer checks."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from aipc_chat.provision.errors import DemoModelError


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
