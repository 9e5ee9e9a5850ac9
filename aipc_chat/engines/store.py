"""Generated images: PNG files with AUTOMATIC1111 ``parameters`` metadata, unguessable names, retention; the store
interface, the local folder store, and the choice between it and an S3 bucket (``store_s3``)."""

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
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aipc_chat.errors import StartupError, StorageError

if TYPE_CHECKING:
    from aipc_chat.engines.contract import ImageParams
    from aipc_chat.settings import Settings

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


class ImageStore(ABC):
    """Where generated PNGs are kept (a local folder, or an S3 bucket several front ends share): unguessable names,
    written whole or not at all, pruned to the newest ``max_images``."""

    max_images: int
    where: str  # what the messages name: the folder, or the bucket and its endpoint

    @staticmethod
    def new_name() -> str:
        """A fresh unguessable name (128 random bits): the URL is the capability."""
        return secrets.token_hex(16)

    def save(self, image: Any, parameters: str, name: str | None = None) -> str:
        """Store the image as PNG with its ``parameters`` chunk and return its name once the store holds it whole;
        prune the oldest beyond the limit. StorageError when the store refuses it, StoreUnavailable when it does
        not answer."""
        name = name or self.new_name()
        if not NAME_RE.match(name):
            raise ValueError(f"not an image name: {name!r}")
        self._write(name, png_bytes(image, parameters))
        self._prune()
        return name

    @abstractmethod
    def _write(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name``, whole or not at all."""

    @abstractmethod
    def _prune(self) -> None:
        """After a save: delete the oldest pictures beyond ``max_images`` (when due)."""

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """The PNG bytes of a stored image; None for unknown or malformed names (which never reach the store)."""

    @abstractmethod
    def delete(self, names: Iterable[str]) -> int:
        """Delete these pictures (a deleted conversation's); how many are gone (a folder counts those it held; S3
        does not tell a missing key apart and counts each one it was asked for). Malformed names are skipped.
        StorageError / StoreUnavailable when the store refuses or does not answer."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the store holds the image (malformed names never reach the store)."""

    def open(self, name: str) -> Iterator[bytes] | None:
        """The PNG in chunks to stream, or None when unknown (known before the first chunk is sent)."""
        data = self.read(name)
        return None if data is None else iter((data,))

    def path(self, name: str) -> Path | None:
        """The local file of a stored image, where the store is a folder (else None)."""
        return None

    def link(self, name: str) -> str | None:
        """A URL clients fetch the image from directly (a presigned storage URL), or None: through this server."""
        return None

    @abstractmethod
    def check_free_space(self, min_free_mb: int) -> None:
        """Raise StorageError when there is no room for another picture (``min_free_mb``: 0 is no check)."""

    def check(self) -> str | None:
        """Why the store cannot be used now (it does not answer, refuses access, has no such bucket), or None."""
        return None


class FolderImageStore(ImageStore):
    """A folder of generated PNGs (``<data_dir>/images``), pruned to the newest ``max_images``."""

    def __init__(self, folder: Path, max_images: int = 1000) -> None:
        self.folder = folder
        self.max_images = max_images
        self.where = str(folder)
        self._lock = threading.Lock()

    def _write(self, name: str, data: bytes) -> None:
        """Temp file + rename, so a crash never leaves half a PNG. A write the disk refuses (full, read-only, I/O
        error) is a StorageError, and leaves no partial file."""
        tmp = self.folder / f".{name}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / f"{name}.png")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(self.folder, exc) from None

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

    def exists(self, name: str) -> bool:
        """Whether the folder holds the image."""
        return self.path(name) is not None

    def read(self, name: str) -> bytes | None:
        """The PNG bytes of a stored image."""
        path = self.path(name)
        return path.read_bytes() if path else None

    def delete(self, names: Iterable[str]) -> int:
        """Unlink each picture's file."""
        deleted = 0
        with self._lock:  # not while a save prunes: it reads the times of the files it listed
            for name in names:
                if not NAME_RE.match(name):
                    continue
                try:
                    (self.folder / f"{name}.png").unlink()
                except FileNotFoundError:  # never made, or pruned already
                    continue
                except OSError as exc:
                    raise storage_error(self.folder, exc) from None
                deleted += 1
        return deleted

    def _prune(self) -> None:
        with self._lock:
            dated = []
            for path in self.folder.glob("*.png"):
                try:
                    dated.append((path.stat().st_mtime, path))
                except FileNotFoundError:  # deleted by another process sharing the folder: not to count
                    continue
            files = [path for _, path in sorted(dated)]
            for old in files[: max(0, len(files) - self.max_images)]:
                old.unlink(missing_ok=True)
                log.info("pruned old image %s", old.name)


def make_image_store(settings: Settings) -> ImageStore:
    """The store the settings ask for: the S3 bucket of ``AIPC_IMAGE_STORE_URL`` when set, else ``<data_dir>/images``.
    StartupError when the URL is malformed or boto3 (``aipc-chat[team]``) is not installed."""
    if not settings.image_store_url:
        return FolderImageStore(settings.data_dir / "images", settings.image_retention)
    try:  # boto3 is an optional extra: imported only when a bucket is asked for
        from aipc_chat.engines.store_s3 import S3ImageStore
    except ModuleNotFoundError as exc:
        if exc.name not in ("boto3", "botocore"):
            raise
        raise StartupError('AIPC_IMAGE_STORE_URL keeps pictures in S3, which needs boto3: '
                           'pip install "aipc-chat[team]"') from None
    return S3ImageStore.from_settings(settings)
