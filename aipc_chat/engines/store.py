"""Generated images on disk: PNG files with AUTOMATIC1111 ``parameters`` metadata, unguessable names, retention."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aipc_chat.errors import StorageError

if TYPE_CHECKING:
    from aipc_chat.engines.contract import ImageParams

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[0-9a-f]{32}$")


def _quote(value: object) -> str:
    """AUTOMATIC1111 quotes values that hold a comma, colon or newline."""
    text = str(value)
    if any(c in text for c in ',:\n"'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def free_mb(folder: Path) -> int | None:
    """Free space on the disk that holds ``folder`` (or its nearest existing parent), in MB."""
    for path in (folder, *folder.parents):
        if path.exists():
            try:
                return int(shutil.disk_usage(path).free // 1_000_000)
            except OSError:
                return None
    return None


def storage_error(folder: Path, exc: OSError) -> StorageError:
    """The client's error for a write the disk refused, saying what to free or fix."""
    reason = exc.strerror or str(exc)
    hint = "free some disk space" if exc.errno == errno.ENOSPC else "check that the data folder is writable"
    return StorageError(f"Could not write to {folder} ({reason}): {hint}. What is already stored is kept.")


def infotext(params: ImageParams, *, seed: int, sampler: str, model: str, steps: int | None = None) -> str:
    """The A1111 "infotext": prompt, negative prompt, then ``key: value`` pairs (``steps``: those done, when the
    picture was interrupted before all were)."""
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    pairs = {"Steps": params.steps if steps is None else steps, "Sampler": sampler,
             "CFG scale": f"{params.guidance_scale:g}", "Seed": seed,
             "Size": f"{params.width}x{params.height}", "Model": model}
    if params.init_image is not None:
        pairs["Denoising strength"] = f"{params.strength:g}"
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs.items()))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([^:,]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, str]:
    """An A1111 infotext back into its parts: ``Prompt``, ``Negative prompt`` and each ``key: value`` of its last
    line (quoted values unquoted), as A1111's ``parse_generation_parameters`` gives them."""
    lines = text.strip().split("\n")
    found = _PAIR.findall(lines[-1])
    last = lines[-1] if len(found) >= 3 else ""  # A1111's rule: a parameters line has three pairs or more
    pairs = {key.strip(): _unquote(value) for key, value in found} if last else {}
    body = lines[:-1] if last else lines
    negative = [i for i, line in enumerate(body) if line.startswith("Negative prompt: ")]
    prompt = body[:negative[0]] if negative else body
    out = {"Prompt": "\n".join(prompt)}
    if negative:
        out["Negative prompt"] = "\n".join(body[negative[0]:]).removeprefix("Negative prompt: ")
    return {**out, **pairs}


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value.strip()
    try:
        return str(json.loads(value))
    except ValueError:  # not a JSON string (a stray backslash): as it is, as A1111 keeps it
        return value


def png_bytes(image: Any, parameters: str) -> bytes:
    """Encode a PIL image as PNG with a ``parameters`` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


class ImageStore:
    """A folder of generated PNGs, pruned to the newest ``max_images``."""

    def __init__(self, folder: Path, max_images: int = 1000) -> None:
        self.folder = folder
        self.max_images = max_images
        self._lock = threading.Lock()

    @staticmethod
    def new_name() -> str:
        """A fresh unguessable name (128 random bits): the URL is the capability."""
        return secrets.token_hex(16)

    def save(self, image: Any, parameters: str, name: str | None = None) -> str:
        """Write atomically (temp file + rename, so a crash never leaves half a PNG); return the name.

        A write the disk refuses (full, read-only, I/O error) is a StorageError, and leaves no partial file.
        """
        name = name or self.new_name()
        data = png_bytes(image, parameters)
        tmp = self.folder / f".{name}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / f"{name}.png")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(self.folder, exc) from None
        self._prune()
        return name

    def check_free_space(self, min_free_mb: int) -> None:
        """Raise StorageError when the images folder's disk has less than ``min_free_mb`` free (0: no check)."""
        free = free_mb(self.folder)
        if min_free_mb and free is not None and free < min_free_mb:
            raise StorageError(f"Only {free} MB are free for pictures in {self.folder}; at least {min_free_mb} MB "
                               "are needed (AIPC_MIN_FREE_MB): free some disk space.")

    def path(self, name: str) -> Path | None:
        """The file of a stored image, or None (unknown or malformed names never touch the file system)."""
        if not NAME_RE.match(name):
            return None
        path = self.folder / f"{name}.png"
        return path if path.is_file() else None

    def read(self, name: str) -> bytes | None:
        """The PNG bytes of a stored image."""
        path = self.path(name)
        return path.read_bytes() if path else None

    def _prune(self) -> None:
        with self._lock:
            files = sorted(self.folder.glob("*.png"), key=lambda p: p.stat().st_mtime)
            for old in files[: max(0, len(files) - self.max_images)]:
                old.unlink(missing_ok=True)
                log.info("pruned old image %s", old.name)
