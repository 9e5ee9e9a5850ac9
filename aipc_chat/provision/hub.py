"""Fetch OpenVINO models from the Hugging Face hub into plain folders, resumably, and verify them.

``download_model`` lists the repository at a revision (one ``model_info`` call: commit sha, sizes, LFS sha256 and git
blob ids), keeps only the files the pipelines need, and fetches each one over plain HTTP with huggingface_hub's own
``get_hf_file_metadata`` (HEAD: CDN redirect, no token sent there) and ``http_get`` (Range, retries on dropped
connections). Plain HTTP, never hf_xet, so that bytes can land in ``<dest>/.aipc-partial/`` and survive an
interruption: huggingface_hub 1.21 deletes its own partial files when a download fails, so the next attempt here
asks for the rest with ``Range`` instead (in steps of its 10 MiB write chunk). Each file is checked
against the hub's sha256 (LFS) or git blob sha1 (small files) before it is moved into place, and
``aipc_manifest.json`` (repo, revision, commit, files with size and sha256) is written last: a folder with a
manifest is complete, and ``verify_manifest`` re-checks it cheaply at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

import httpx
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._fixes import WeakFileLock
from huggingface_hub.utils._headers import build_hf_headers
from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

from aipc_chat import __version__
from aipc_chat.errors import (
    DownloadCorrupted,
    HubAccessDenied,
    HubRepoNotFound,
    HubUnreachable,
    ModelSetupError,
)
from aipc_chat.provision.resolve import REQUIRED_FILES, offline_ways_out

__all__ = [
    "MANIFEST_NAME",
    "PARTIAL_DIR",
    "ProgressCallback",
    "RemoteFile",
    "download_model",
    "explain_hub_failure",
    "file_entries",
    "list_models",
    "read_manifest",
    "verify_manifest",
    "wanted_file",
    "write_manifest",
]

logger = logging.getLogger(__name__)

Kind = Literal["llm", "image"]
ProgressCallback = Callable[[int, int], None]

MANIFEST_NAME = "aipc_manifest.json"
MANIFEST_VERSION = 1
PARTIAL_DIR = ".aipc-partial"
DEMO_MARKER = "aipc_demo.json"
OFFLINE_REASON = "HF_HUB_OFFLINE=1 is set"  # why the hub is not asked, when it is the setting
_HASH_BLOCK = 1024 * 1024
_MAX_SIBLINGS = 1000  # beyond this huggingface_hub itself stops trusting model_info's file list

# Files the pipelines read. LLM: the IR, tokenizer/detokenizer IR, configs and tokenizer files at the top level.
_LLM_FILES = frozenset({
    "openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
    "openvino_detokenizer.xml", "openvino_detokenizer.bin", "tokenizer.json", "tokenizer.model", "vocab.json",
    "merges.txt", "chat_template.jinja",
})
# Image: model_index.json, each component's IR and configs, the tokenizer and scheduler folders whole.
_IMAGE_COMPONENT_FILES = frozenset({"openvino_model.xml", "openvino_model.bin"})
_IMAGE_WHOLE_FOLDERS = frozenset({"tokenizer", "tokenizer_2", "scheduler"})
# Never worth downloading: other weight formats, docs, pictures.
_SKIP_SUFFIXES = (".onnx", ".onnx_data", ".safetensors", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf",
                  ".md", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".gitattributes")


@dataclass(frozen=True)
class RemoteFile:
    """One repository file as the hub lists it."""

    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    git_oid: str | None  # the git blob id (for a small git file, the sha1 of its content)

    @property
    def expected_oid(self) -> str | None:
        """What identifies the content: the LFS sha256, else the git blob sha1."""
        return self.sha256 or self.git_oid


# --------------------------------------------------------------------------------------------------- public


def wanted_file(path: str, kind: Kind) -> bool:
    """Whether a repository file is one the ``kind`` pipeline needs."""
    if path.lower().endswith(_SKIP_SUFFIXES):
        return False
    parts = path.split("/")
    if kind == "llm":
        return len(parts) == 1 and (path in _LLM_FILES or path.endswith(".json"))
    if len(parts) == 1:
        return path == "model_index.json"
    if len(parts) != 2:
        return False
    folder, name = parts
    return folder in _IMAGE_WHOLE_FOLDERS or name in _IMAGE_COMPONENT_FILES or name.endswith(".json")


def download_model(
    repo: str,
    revision: str,
    dest: Path,
    *,
    kind: Kind,
    token: str | None,
    progress: ProgressCallback | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download the files ``kind`` needs from ``repo`` at ``revision`` into ``dest``, verify them, return ``dest``.

    ``token`` None uses huggingface_hub's own login (``hf auth login``) if any. ``progress(done, total)`` gets bytes.
    ``endpoint`` defaults to ``HF_ENDPOINT`` read now (huggingface_hub reads it once, at import).
    """
    dest = Path(dest)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    where = _Where(repo, revision, dest, kind, endpoint, token or None)
    old = read_manifest(dest)
    if hub_offline():
        return _use_local_copy(where, OFFLINE_REASON)
    if old is not None and old.get("commit") == revision and not verify_manifest(dest):
        return dest  # a pinned commit never changes: no need to ask the hub
    dest.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(dest.parent / f".{dest.name}.lock"):
        try:
            commit, files = _remote_files(where)
        except _UNREACHABLE as exc:
            return _use_local_copy(where, _reason(exc))
        except HfHubHTTPError as exc:
            if _status(exc) >= 500 or _status(exc) == 429:
                return _use_local_copy(where, _reason(exc))
            raise _hub_error(exc, where) from exc
        _check_required(where, files)
        total = sum(f.size for f in files)
        if _up_to_date(dest, old, commit, files):
            logger.info("%s@%s (%s) is already in %s", repo, revision, commit[:12], dest)
        else:
            dest.mkdir(exist_ok=True)
            _remove_stale(dest, old, files)
            entries = _fetch_all(where, commit, files, old, progress)
            write_manifest(dest, entries, source="hub", kind=kind, repo=repo, revision=revision, commit=commit,
                           endpoint=endpoint)
            shutil.rmtree(dest / PARTIAL_DIR, ignore_errors=True)
            logger.info("downloaded %s@%s (%s) into %s", repo, revision, commit[:12], dest)
    if progress is not None:
        progress(total, total)
    return dest


def probe_repo(repo: str, revision: str, dest: Path, *, kind: Kind, token: str | None,
               endpoint: str | None = None) -> None:
    """Fail fast, before serving, when a missing model cannot be downloaded (offline, unreachable, gated, unknown,
    or not an OpenVINO repository): one metadata request, no file transfer."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    where = _Where(repo, revision, Path(dest), kind, endpoint, token or None)
    if hub_offline():
        raise _unreachable(where, OFFLINE_REASON)
    try:
        _, files = _remote_files(where)
    except _UNREACHABLE as exc:
        raise _unreachable(where, _reason(exc)) from exc
    except HfHubHTTPError as exc:
        if _status(exc) >= 500 or _status(exc) == 429:
            raise _unreachable(where, _reason(exc)) from exc
        raise _hub_error(exc, where) from exc
    _check_required(where, files)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it is absent or unreadable."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def write_manifest(folder: Path, files: dict[str, dict[str, Any]], **facts: Any) -> Path:
    """Atomically write ``aipc_manifest.json`` (``facts`` plus ``files``: path -> size, sha256, ...) into ``folder``."""
    folder = Path(folder)
    manifest = {
        "format_version": MANIFEST_VERSION,
        **facts,
        "created_unix": int(time.time()),
        "total_bytes": sum(int(f["size"]) for f in files.values()),
        "files": dict(sorted(files.items())),
    }
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    return folder / MANIFEST_NAME


def verify_manifest(dest: Path, *, full: bool = False) -> list[str]:
    """Problems with a downloaded folder: its manifest, then each file's existence and size (and sha256 if ``full``)."""
    dest = Path(dest)
    manifest = read_manifest(dest)
    if manifest is None:
        state = "unreadable" if (dest / MANIFEST_NAME).exists() else "missing"
        return [f"{MANIFEST_NAME} is {state}: the download did not finish (run `aipc-chat download`)"]
    problems: list[str] = []
    files: dict[str, Any] = manifest["files"]
    for rel, info in files.items():
        try:
            path = _local_path(dest, rel)
        except ModelSetupError as exc:
            problems.append(str(exc))
            continue
        problems += _file_problems(path, rel, info, full=full)
    kind = manifest.get("kind")
    if kind in REQUIRED_FILES:
        problems += [f"{name}: required but not in the manifest" for name in REQUIRED_FILES[kind] if name not in files]
    return problems


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """Manifest entries (size, sha256) for every file under ``folder`` but the manifest and partial downloads."""
    folder = Path(folder)
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.as_posix() != MANIFEST_NAME and PARTIAL_DIR not in rel.parts:
            entries[rel.as_posix()] = {"size": path.stat().st_size, "sha256": _hash_file(path)[0]}
    return entries


def explain_hub_failure(exc: BaseException, repo: str, *, revision: str, kind: Kind, token: str | None,
                        dest: Path) -> ModelSetupError | None:
    """For a conversion from a hub id: the hub error behind ``exc`` (or its causes) as one of ours, else None."""
    where = _Where(repo, revision, Path(dest), kind, constants.ENDPOINT, token)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HfHubHTTPError) and _status(seen) < 500 and _status(seen) != 429:
            return _hub_error(seen, where)
        if isinstance(seen, _UNREACHABLE + (HfHubHTTPError,)):
            return HubUnreachable(
                f"Converting {repo} needs the Hugging Face hub at {where.endpoint}, which cannot be reached "
                f"({_reason(seen)}). On a connected machine fetch it (`hf download {repo} --local-dir DIR`), then run "
                f"`aipc-chat convert DIR --kind {kind}`; or download a converted model with `aipc-chat download`."
            )
        seen = seen.__cause__ or seen.__context__
    return None


def list_models(models_dir: Path) -> list[dict[str, Any]]:
    """What is under ``<models>/hub/*/*``, ``<models>/converted/*`` and ``<models>/demo/*``: size, kind, verified."""
    models_dir = Path(models_dir)
    rows: list[dict[str, Any]] = []
    for repo_folder in _subfolders(models_dir / "hub"):
        owner, _, name = repo_folder.name.partition("--")
        for rev_folder in _subfolders(repo_folder):
            rows.append(_describe(rev_folder, "hub", f"{owner}/{name}" if name else owner, rev_folder.name))
    for folder in _subfolders(models_dir / "converted"):
        rows.append(_describe(folder, "converted", folder.name, None))
    for folder in _subfolders(models_dir / "demo"):
        rows.append(_describe(folder, "demo", folder.name, None))
    return rows


# ---------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class _Where:
    """What one download is about, for requests and messages."""

    repo: str
    revision: str
    dest: Path
    kind: Kind
    endpoint: str
    token: str | None

    def api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token, library_name="aipc-chat", library_version=__version__)


def _remote_files(where: _Where) -> tuple[str, list[RemoteFile]]:
    """The commit the revision points at and the needed files, from model_info (list_repo_tree if unreliable)."""
    api = where.api()
    info = api.model_info(where.repo, revision=where.revision, files_metadata=True,
                          timeout=constants.HF_HUB_ETAG_TIMEOUT)
    commit = info.sha
    if not commit:
        raise HubRepoNotFound(f"The hub did not say which commit {where.repo}@{where.revision} is.")
    siblings = info.siblings or []
    if siblings and len(siblings) <= _MAX_SIBLINGS and all(s.size is not None for s in siblings):
        listed: Iterable[RemoteFile] = (
            RemoteFile(s.rfilename, int(s.size or 0), s.lfs.sha256 if s.lfs else None, s.blob_id) for s in siblings
        )
    else:
        tree = api.list_repo_tree(where.repo, revision=commit, recursive=True)
        listed = (
            RemoteFile(f.path, f.size, f.lfs.sha256 if f.lfs else None, f.blob_id)
            for f in tree if isinstance(f, RepoFile)
        )
    files = sorted((f for f in listed if wanted_file(f.path, where.kind)), key=lambda f: f.path)
    for f in files:
        _local_path(where.dest, f.path)  # refuse unsafe names before writing anything
    return commit, files


def _check_required(where: _Where, files: list[RemoteFile]) -> None:
    """Refuse a repository that is not an OpenVINO model of this kind (nothing downloaded yet)."""
    names = {f.path for f in files}
    missing = [name for name in REQUIRED_FILES[where.kind] if name not in names]
    if missing:
        raise ModelSetupError(
            f"{where.repo}@{where.revision} has no {', '.join(missing)}: it is not an OpenVINO {where.kind} model. "
            f"Convert a Hugging Face model with `aipc-chat convert {where.repo} --kind {where.kind}`, or pick an "
            "OpenVINO repository (e.g. one of huggingface.co/OpenVINO)."
        )


def _up_to_date(dest: Path, old: dict[str, Any] | None, commit: str, files: list[RemoteFile]) -> bool:
    """Whether the folder's manifest already covers exactly these files at this commit, and they are all there."""
    if old is None or old.get("commit") != commit:
        return False
    if set(old["files"]) != {f.path for f in files}:
        return False
    return not verify_manifest(dest)


def _remove_stale(dest: Path, old: dict[str, Any] | None, files: list[RemoteFile]) -> None:
    """Delete files an earlier download put here that the new revision no longer has."""
    if old is None:
        return
    keep = {f.path for f in files}
    for rel in old["files"]:
        if rel not in keep:
            _invalidate(dest)
            with suppress(OSError, ModelSetupError):
                _local_path(dest, rel).unlink(missing_ok=True)


def _invalidate(dest: Path) -> None:
    """Drop the manifest before the first file changes: the folder is unverified until the new one lands."""
    (dest / MANIFEST_NAME).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- fetching


class _Progress:
    """All files' bytes in one huggingface_hub progress bar and the caller's ``progress(done, total)``."""

    def __init__(self, total: int, done: int, desc: str, callback: ProgressCallback | None) -> None:
        self.total = total
        self.done = done
        self.callback = callback
        # disable=None: a bar on a terminal, silence in logs; HF_HUB_DISABLE_PROGRESS_BARS turns it off too.
        self.bar: Any = cast(Any, hf_tqdm)(total=total, initial=done, unit="B", unit_scale=True, desc=desc,
                                           disable=None)
        self.report()

    def add(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)

    def file_bar(self) -> type:
        """A tqdm stand-in for ``http_get`` that feeds this aggregate (it ignores ``initial``: counted already)."""
        outer = self

        class _FileBar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def __enter__(self) -> _FileBar:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, n: float | None = 1) -> None:
                outer.add(int(n or 0))

        return _FileBar


def _fetch_all(where: _Where, commit: str, files: list[RemoteFile], old: dict[str, Any] | None,
               progress: ProgressCallback | None) -> dict[str, dict[str, Any]]:
    """Download (or keep) every file; return the manifest entries."""
    old_files: dict[str, Any] = old["files"] if old else {}
    present = {f.path: _reusable(where.dest, f, old_files.get(f.path)) for f in files}
    done = sum(f.size for f in files if present[f.path] is not None)
    done += sum(_partial_size(where.dest, f) for f in files if present[f.path] is None)
    bar = _Progress(sum(f.size for f in files), done, f"Downloading {where.repo}", progress)
    entries: dict[str, dict[str, Any]] = {}
    corrupted: list[DownloadCorrupted] = []
    try:
        for f in files:
            try:
                sha256 = present[f.path] or _fetch_one(where, commit, f, bar)
            except DownloadCorrupted as exc:  # fetch the rest: a rerun then only needs the bad files
                corrupted.append(exc)
                continue
            entries[f.path] = {"size": f.size, "sha256": sha256, "oid": f.expected_oid, "lfs": f.sha256 is not None}
    finally:
        bar.bar.close()
    if len(corrupted) == 1:
        raise corrupted[0]
    if corrupted:
        raise DownloadCorrupted(" ".join(str(exc) for exc in corrupted)) from corrupted[0]
    return entries


def _reusable(dest: Path, f: RemoteFile, known: dict[str, Any] | None) -> str | None:
    """The sha256 of an already present, matching file (trusting a manifest entry with the same id), else None."""
    path = _local_path(dest, f.path)
    if not path.is_file() or path.stat().st_size != f.size:
        return None
    if known and known.get("oid") == f.expected_oid and known.get("size") == f.size and known.get("sha256"):
        return str(known["sha256"])
    sha256, git_oid = _hash_file(path)
    matches = sha256 == f.sha256 if f.sha256 else f.git_oid in (None, git_oid)
    if matches:
        return sha256
    logger.warning("%s differs from the hub's copy; downloading it again", path)
    return None


def _partial_path(dest: Path, f: RemoteFile) -> Path:
    """Where the bytes of ``f`` collect until verified; the content id in the name keeps versions apart."""
    part = _local_path(dest / PARTIAL_DIR, f.path)
    return part.with_name(f"{part.name}.{(f.expected_oid or 'unknown')[:16]}.part")


def _partial_size(dest: Path, f: RemoteFile) -> int:
    part = _partial_path(dest, f)
    size = part.stat().st_size if part.is_file() else 0
    return size if size <= f.size else 0


def _fetch_one(where: _Where, commit: str, f: RemoteFile, bar: _Progress) -> str:
    """Download ``f`` (resuming its partial file), verify it and move it into place; return its sha256."""
    part = _partial_path(where.dest, f)
    if part.is_file() and part.stat().st_size > f.size:
        part.unlink()
    url = hf_hub_url(where.repo, f.path, revision=commit, endpoint=where.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=where.token, endpoint=where.endpoint)
        part.parent.mkdir(parents=True, exist_ok=True)
        headers = build_hf_headers(token=where.token, library_name="aipc-chat", library_version=__version__)
        target_url = url
        if meta.xet_file_data is None and meta.location != url:
            target_url = meta.location  # the CDN: a signed URL, so no token goes there (as huggingface_hub does)
            if urlparse(url).netloc != urlparse(target_url).netloc:
                headers.pop("authorization", None)
        bar.bar.set_description(f"Downloading {f.path}")
        with part.open("ab") as out:
            resume = out.tell()
            if resume:
                logger.info("resuming %s at byte %d of %d", f.path, resume, f.size)
            http_get(target_url, out, resume_size=resume, headers=headers, expected_size=f.size,
                     displayed_filename=f.path, tqdm_class=cast(Any, bar.file_bar()))
    except HfHubHTTPError as exc:
        if _status(exc) == 416:  # our partial file is longer than the hub's: start this file over next time
            part.unlink(missing_ok=True)
        raise _hub_error(exc, where) from exc
    except _UNREACHABLE as exc:
        raise _unreachable(where, _reason(exc), missing=[f.path]) from exc
    except OSError as exc:
        if "Consistency check failed" not in str(exc):
            raise
        part.unlink(missing_ok=True)
        raise DownloadCorrupted(f"{f.path} from {where.repo} came with the wrong size ({exc}); the partial file was "
                                "deleted. Rerun `aipc-chat download`.") from exc
    return _verify_and_place(where, f, part)


def _verify_and_place(where: _Where, f: RemoteFile, part: Path) -> str:
    """Check the finished partial file against the hub's hashes, then move it to its place."""
    sha256, git_oid = _hash_file(part)
    size = part.stat().st_size
    expected = f.sha256 or f.git_oid
    actual = sha256 if f.sha256 else git_oid
    if size != f.size or (expected is not None and actual != expected):
        part.unlink(missing_ok=True)
        what = "sha256" if f.sha256 else "git sha1"
        raise DownloadCorrupted(
            f"{f.path} from {where.repo}@{where.revision} is corrupted ({size} bytes, {what} {actual}; the hub says "
            f"{f.size} bytes, {what} {expected}). The file was deleted: rerun `aipc-chat download`."
        )
    if expected is None:
        logger.warning("the hub gave no hash for %s; checked its size only", f.path)
    target = _local_path(where.dest, f.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _invalidate(where.dest)
    os.replace(part, target)
    return sha256


# --------------------------------------------------------------------------------------------- checking


def _hash_file(path: Path) -> tuple[str, str]:
    """The sha256 and the git blob sha1 of a file, in one pass."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def _file_problems(path: Path, rel: str, info: Any, *, full: bool) -> list[str]:
    """What is wrong with one manifest entry's file (nothing: an empty list)."""
    if not isinstance(info, dict) or not isinstance(info.get("size"), int):
        return [f"{rel}: malformed manifest entry"]
    if not path.is_file():
        return [f"{rel}: missing"]
    size = path.stat().st_size
    if size != info["size"]:
        return [f"{rel}: {size} bytes, the manifest says {info['size']}"]
    if full and info.get("sha256") and _hash_file(path)[0] != info["sha256"]:
        return [f"{rel}: sha256 differs from the manifest (the file is corrupted)"]
    return []


def _local_path(root: Path, rel: str) -> Path:
    """``root`` joined with a repository path, refusing anything that could leave ``root``."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p or ":" in p for p in parts):
        raise ModelSetupError(f"refusing the unsafe repository path {rel!r}")
    return root.joinpath(*parts)


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _describe(folder: Path, source: str, name: str, revision: str | None) -> dict[str, Any]:
    """One row of ``list_models``."""
    files = [p for p in folder.rglob("*") if p.is_file() and PARTIAL_DIR not in p.relative_to(folder).parts]
    manifest = read_manifest(folder)
    kind = _kind_of(folder, manifest, source)
    if source == "demo":
        problems = [] if (folder / DEMO_MARKER).is_file() else [f"{DEMO_MARKER} is missing: the build did not finish"]
        if kind is not None:
            problems += [f"{n}: missing" for n in REQUIRED_FILES[kind] if not (folder / n).is_file()]
    else:
        problems = verify_manifest(folder)
    return {
        "source": source,
        "name": name,
        "revision": revision,
        "commit": manifest.get("commit") if manifest else None,
        "kind": kind,
        "path": str(folder),
        "files": len(files),
        "size_bytes": sum(p.stat().st_size for p in files),
        "verified": not problems,
        "problems": problems,
    }


def _kind_of(folder: Path, manifest: dict[str, Any] | None, source: str) -> Kind | None:
    """The kind a manifest records, the demo folder's name, or the kind whose required files are all there."""
    for kind in REQUIRED_FILES:
        if (manifest and manifest.get("kind") == kind) or (source == "demo" and folder.name == kind):
            return kind
    for kind, required in REQUIRED_FILES.items():
        if all((folder / n).is_file() for n in required):
            return kind
    return None


# ----------------------------------------------------------------------------------------------- errors

_UNREACHABLE = (OfflineModeIsEnabled, httpx.ConnectError, httpx.TimeoutException, httpx.NetworkError,
                httpx.RemoteProtocolError, LocalEntryNotFoundError, FileMetadataError)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub saw it at import, or as it is now."""
    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or now.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _status(exc: HfHubHTTPError) -> int:
    response = getattr(exc, "response", None)
    return int(response.status_code) if response is not None else 0


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _use_local_copy(where: _Where, reason: str) -> Path:
    """Offline: keep a complete earlier download of the same repository, else say what is missing and what to run."""
    manifest = read_manifest(where.dest)
    same = manifest is not None and manifest.get("repo") == where.repo and where.revision in (
        manifest.get("revision"), manifest.get("commit"))
    if same and not verify_manifest(where.dest):
        logger.warning("cannot reach the hub (%s); using the verified copy of %s in %s", reason, where.repo,
                       where.dest)
        return where.dest
    raise _unreachable(where, reason)


def _unreachable(where: _Where, reason: str, missing: list[str] | None = None) -> HubUnreachable:
    if missing is not None:
        problems = [f"{m}: missing" for m in missing]
    elif where.dest.is_dir() and any(where.dest.iterdir()):
        problems = verify_manifest(where.dest)
    else:
        problems = []
    state = f"is incomplete ({'; '.join(problems[:3])})" if problems else "is not downloaded"
    unset = "; unset it to download" if reason == OFFLINE_REASON else ""
    hub = f"the Hugging Face hub at {where.endpoint} cannot be reached ({reason}{unset})"
    return HubUnreachable(  # the ways out first, none of them a download: a download is what cannot happen now
        f"The {where.kind} model {where.repo}@{where.revision} {state} in {where.dest}, and {hub}. "
        f"{offline_ways_out(where.dest)} Once the hub answers, `aipc-chat download` fetches it, resuming where it "
        "stopped.", reason=hub)


def _hub_error(exc: HfHubHTTPError, where: _Where) -> ModelSetupError:
    """A huggingface_hub HTTP error as one of ours, saying what to do."""
    page = f"{where.endpoint}/{where.repo}"
    token_hint = "set HUGGINGFACE_TOKEN (or HF_TOKEN) to a read token"
    if isinstance(exc, GatedRepoError):
        if where.token is None:
            return HubAccessDenied(f"{where.repo} is a gated repository: accept its licence at {page} while logged "
                                   f"in, then {token_hint} of that account (huggingface.co/settings/tokens).")
        return HubAccessDenied(f"{where.repo} is gated and the token given has no access: accept the licence at "
                               f"{page} with the account the token belongs to (approval may take a while), or "
                               f"{token_hint} of an account that has.")
    if isinstance(exc, RevisionNotFoundError):
        return HubRepoNotFound(f"{where.repo} has no revision {where.revision!r}: check AIPC_LLM_REVISION / "
                               "AIPC_IMAGE_REVISION (a branch, tag or commit sha).")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubRepoNotFound(f"a file listed by {where.repo}@{where.revision} is gone from the hub: rerun "
                               "`aipc-chat download` (the repository changed meanwhile).")
    if isinstance(exc, RepositoryNotFoundError):
        private = (f"if it is private, {token_hint} with access to it" if where.token is None
                   else "or the token given has no access to it")
        return HubRepoNotFound(f"{where.repo} was not found on {where.endpoint}: check the name ({private}).")
    status = _status(exc)
    if status == 401:
        return HubAccessDenied(f"the hub rejected the token (invalid or expired) while fetching {where.repo}: "
                               f"{token_hint} that is valid (huggingface.co/settings/tokens).")
    if status == 403:
        return HubAccessDenied(f"the hub refused access to {where.repo} ({_reason(exc)}): {token_hint} with "
                               "access to it, and accept its licence if it has one.")
    if status >= 500 or status == 429:
        return _unreachable(where, _reason(exc))
    return ModelSetupError(f"downloading {where.repo}@{where.revision} failed: {_reason(exc)}")
