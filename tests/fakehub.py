"""A local stand-in for the Hugging Face hub that answers the HTTP calls huggingface_hub 1.21 makes to fetch a repo.

Two stdlib HTTP servers on 127.0.0.1 (random ports) share one state: the *hub* (``/api/models/...`` and
``/{repo}/resolve/{rev}/{path}``) and a *CDN* on another port that LFS files redirect to, so the client sees a
cross-origin redirect exactly as with huggingface.co (and must drop its Authorization header there).

What huggingface_hub 1.21.0 sends, and what this answers (read from its ``hf_api.py``, ``file_download.py`` and
``utils/_http.py``):

* ``GET /api/models/{repo}[/revision/{rev}]?blobs=True`` (``HfApi.model_info(files_metadata=True)``; ``repo_info``
  in ``snapshot_download``): JSON with ``sha`` (the commit) and ``siblings`` (``rfilename``, ``size``, ``blobId``,
  ``lfs: {sha256, size, pointerSize}``).
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=..&expand=..`` (``list_repo_tree``): a JSON list of
  ``{type: file|directory, path, oid, size, lfs: {oid, size, pointerSize}}``.
* ``POST /api/models/{repo}/paths-info/{rev}`` (form ``paths=..``; ``get_paths_info``): the same entries.
* ``HEAD /{repo}/resolve/{rev}/{path}`` (``get_hf_file_metadata``, no redirect following): a small git file gets 200
  with ``ETag`` (its git blob sha1), ``X-Repo-Commit`` and ``Content-Length``; an LFS file gets 302 with ``Location``
  (the CDN), ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and ``X-Repo-Commit``.
* ``GET`` of that location, with ``Range: bytes=N-`` when resuming: 200 or 206 with ``Content-Range``.

No response carries ``X-Xet-Hash`` / ``X-Xet-Refresh-Route`` or a ``xet-auth`` link, so the client never takes the
Xet path. Errors carry ``X-Error-Code`` / ``X-Error-Message`` and a ``{"error": ...}`` body as the hub's do:
``RepoNotFound`` (401 anonymous, 404 authenticated), ``GatedRepo`` (401 anonymous, 403 not on the list),
``RevisionNotFound`` / ``EntryNotFound`` (404), and 401 "Invalid credentials in Authorization header" for an
unknown token. Test hooks: ``cut_once(path, after)`` closes the connection after ``after`` body bytes of the next
download of ``path``; ``corrupt(path)`` flips one served byte; ``log`` records every request and the bytes sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".onnx", ".msgpack", ".h5", ".pt", ".pth", ".ckpt", ".model", ".png")
INVALID_TOKEN = "Invalid credentials in Authorization header"
_CHUNK = 64 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: sha1 of ``blob <size>\\0`` + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class RepoFileEntry:
    """One file of a fake repository."""

    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob id: of the content for a git file, of the LFS pointer for an LFS file."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry

    def sibling(self, blobs: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            entry |= {"size": self.size, "blobId": self.oid}
            if self.lfs:
                entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class FakeRepo:
    """A model repository served by the fake hub."""

    repo_id: str
    files: dict[str, RepoFileEntry]
    gated: bool = False
    private: bool = False
    readers: set[str] = field(default_factory=set)  # tokens allowed in (accepted the licence / members)
    file_metadata: bool = True  # False: model_info lists bare names even with blobs=true (a client must use the tree)

    @property
    def commit(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode(), usedforsecurity=False)
        for path in sorted(self.files):
            digest.update(f"{path}\0{self.files[path].oid}\n".encode())
        return digest.hexdigest()


@dataclass
class Served:
    """One request the fake hub answered."""

    server: str  # "hub" or "cdn"
    method: str
    path: str  # URL path (unquoted), or the repo file path for downloads
    status: int
    range: str | None = None
    authorized: bool = False  # an Authorization header was sent
    body_bytes: int = 0


class FakeHub:
    """The fake hub and CDN servers, their repositories and test hooks; use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.tokens: set[str] = set()  # every token the hub knows (others get 401 invalid credentials)
        self.log: list[Served] = []
        self._cuts: dict[str, int] = {}
        self._corrupt: dict[str, int] = {}
        self._lock = threading.Lock()
        self._hub = _Server(("127.0.0.1", 0), _make_handler(self, "hub"))
        self._cdn = _Server(("127.0.0.1", 0), _make_handler(self, "cdn"))
        self._threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
                         for s in (self._hub, self._cdn)]
        for thread in self._threads:
            thread.start()

    # ----------------------------------------------------------------------------------- set-up and hooks

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add_repo(self, repo_id: str, folder: Path | None = None, *, extra: dict[str, bytes] | None = None,
                 gated: bool = False, private: bool = False, readers: set[str] | None = None,
                 file_metadata: bool = True, lfs_over: int = 10 * 1024 * 1024) -> FakeRepo:
        """Serve ``folder`` (plus ``extra`` files) as ``repo_id``; big files and weight suffixes go to LFS."""
        contents: dict[str, bytes] = {}
        if folder is not None:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    contents[file.relative_to(folder).as_posix()] = file.read_bytes()
        contents |= extra or {}
        files = {p: RepoFileEntry(p, d, p.endswith(LFS_SUFFIXES) or len(d) > lfs_over) for p, d in contents.items()}
        repo = FakeRepo(repo_id, files, gated=gated, private=private, readers=set(readers or ()),
                        file_metadata=file_metadata)
        self.tokens |= repo.readers
        self.repos[repo_id] = repo
        return repo

    def cut_once(self, path: str, after: int) -> None:
        """Close the connection after ``after`` body bytes the next time ``path`` is downloaded."""
        self._cuts[path] = after

    def corrupt(self, path: str, offset: int = 0) -> None:
        """Serve ``path`` with the byte at ``offset`` flipped (size and advertised hashes unchanged)."""
        self._corrupt[path] = offset

    def heal(self, path: str) -> None:
        """Serve ``path`` intact again."""
        self._corrupt.pop(path, None)

    def downloads(self, path: str) -> list[Served]:
        """The body-carrying GETs of a repo file, in order."""
        return [s for s in self.log if s.method == "GET" and s.path == path and s.status in (200, 206)]

    def fetched(self, since: int = 0) -> list[str]:
        """Repo files whose bodies were sent since ``log[since]``, in order."""
        return [s.path for s in self.log[since:]
                if s.method == "GET" and s.status in (200, 206) and not s.path.startswith("/api/")]

    def bytes_served(self, path: str) -> int:
        """Body bytes sent for ``path`` so far."""
        return sum(s.body_bytes for s in self.downloads(path))

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ internals

    def record(self, served: Served) -> None:
        with self._lock:
            self.log.append(served)

    def take_cut(self, path: str) -> int | None:
        with self._lock:
            return self._cuts.pop(path, None)

    def body_of(self, entry: RepoFileEntry) -> bytes:
        offset = self._corrupt.get(entry.path)
        if offset is None:
            return entry.data
        data = bytearray(entry.data)
        data[offset] ^= 0xFF
        return bytes(data)

    def find_blob(self, sha256: str) -> RepoFileEntry | None:
        for repo in self.repos.values():
            for entry in repo.files.values():
                if entry.lfs and entry.sha256 == sha256:
                    return entry
        return None


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client hangs up mid-body."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


class _Reply(Exception):
    """Raised inside a handler to send an error response."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Handler(BaseHTTPRequestHandler):
    """Answers as the hub or as the CDN (``role``) for one ``FakeHub``."""

    hub: FakeHub
    role: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        return

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # ---------------------------------------------------------------------------------- routing

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        try:
            if self.role == "cdn":
                self._cdn_get(method, path)
            elif path.startswith("/api/models/"):
                self._api(method, path.removeprefix("/api/models/"), query)
            elif "/resolve/" in path:
                self._resolve(method, path)
            else:
                raise _Reply(404, "Not Found")
        except _Reply as reply:
            self._error(method, path, reply)

    def _api(self, method: str, rest: str, query: dict[str, list[str]]) -> None:
        parts = rest.split("/")
        repo = self._repo("/".join(parts[:2]), content=False)
        tail = parts[2:]
        if method == "GET" and (not tail or (len(tail) == 2 and tail[0] == "revision")):
            self._check_revision(repo, tail[1] if tail else "main")
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            self._json(method, "/api/models/" + rest, _model_info(repo, blobs))
        elif method == "GET" and len(tail) >= 2 and tail[0] == "tree":
            self._check_revision(repo, tail[1])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            self._json(method, "/api/models/" + rest, _tree(repo, "/".join(tail[2:]), recursive))
        elif method == "POST" and len(tail) == 2 and tail[0] == "paths-info":
            self._check_revision(repo, tail[1])
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            wanted = set(form.get("paths", []))
            self._json(method, "/api/models/" + rest, [e for e in _tree(repo, "", True) if e["path"] in wanted])
        else:
            raise _Reply(404, "Not Found")

    def _resolve(self, method: str, path: str) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, file_path = rest.partition("/")
        repo = self._repo(repo_id, content=True)
        self._check_revision(repo, revision)
        entry = repo.files.get(file_path)
        if entry is None:
            raise _Reply(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if entry.lfs:
            location = f"{self.hub.cdn}/lfs/{entry.sha256}?file={quote(entry.path)}&X-Amz-Signature=fake"
            headers |= {"Location": location, "X-Linked-Etag": f'"{entry.sha256}"',
                        "X-Linked-Size": str(entry.size), "ETag": f'"{entry.oid}"'}
            self._send(method, 302, headers, b"", entry.path)
            return
        headers["ETag"] = f'"{entry.oid}"'
        self._body(method, entry, headers)

    def _cdn_get(self, method: str, path: str) -> None:
        if not path.startswith("/lfs/"):
            raise _Reply(404, "Not Found")
        entry = self.hub.find_blob(path.removeprefix("/lfs/"))
        if entry is None:
            raise _Reply(404, "NoSuchKey")
        self._body(method, entry, {"ETag": f'"{entry.sha256}"', "Accept-Ranges": "bytes"})

    # --------------------------------------------------------------------------------- checks

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            raise _Reply(401, INVALID_TOKEN)
        return token

    def _repo(self, repo_id: str, *, content: bool) -> FakeRepo:
        token = self._token()
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.readers):
            raise _Reply(401 if token is None else 404, "Repository not found", "RepoNotFound")
        if repo.gated and content and token not in repo.readers:
            if token is None:
                raise _Reply(401, f"Access to model {repo_id} is restricted. You must have access to it and be "
                                  "authenticated to access it. Please log in.", "GatedRepo")
            raise _Reply(403, f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                              f"Visit https://huggingface.co/{repo_id} to ask for access.", "GatedRepo")
        return repo

    def _check_revision(self, repo: FakeRepo, revision: str) -> None:
        if revision not in ("main", repo.commit):
            raise _Reply(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # -------------------------------------------------------------------------------- replies

    def _body(self, method: str, entry: RepoFileEntry, headers: dict[str, str]) -> None:
        """Send a file body (whole, or from a ``Range: bytes=N-`` start), honouring a pending cut."""
        data = self.hub.body_of(entry)
        wanted = self.headers.get("Range")
        start = 0
        status = 200
        if wanted:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= entry.size:
                headers["Content-Range"] = f"bytes */{entry.size}"
                self._send(method, 416, headers, b"", entry.path, wanted)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{entry.size - 1}/{entry.size}"
        cut = self.hub.take_cut(entry.path) if method == "GET" else None
        self._send(method, status, headers, data[start:], entry.path, wanted, cut=cut)

    def _json(self, method: str, path: str, payload: Any) -> None:
        self._send(method, 200, {"Content-Type": "application/json; charset=utf-8"},
                   json.dumps(payload).encode(), path)

    def _error(self, method: str, path: str, reply: _Reply) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": reply.message}
        if reply.code:
            headers["X-Error-Code"] = reply.code
        self._send(method, reply.status, headers, json.dumps({"error": reply.message}).encode(), path)

    def _send(self, method: str, status: int, headers: dict[str, str], body: bytes, logged_path: str,
              wanted: str | None = None, *, cut: int | None = None) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        sent = 0
        if method != "HEAD":
            limit = len(body) if cut is None else min(cut, len(body))
            for start in range(0, limit, _CHUNK):
                piece = body[start : min(start + _CHUNK, limit)]
                self.wfile.write(piece)
                sent += len(piece)
            self.wfile.flush()
            if cut is not None:
                time.sleep(0.05)  # let the client read what was sent before the connection drops
                self.close_connection = True
        self.hub.record(Served(self.role, method, logged_path, status, wanted,
                          self.headers.get("Authorization") is not None, sent))


def _make_handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to ``hub``, acting as the hub or the CDN."""
    return type(f"_{role.title()}Handler", (_Handler,), {"hub": hub, "role": role})


def _model_info(repo: FakeRepo, blobs: bool) -> dict[str, Any]:
    """The JSON of ``GET /api/models/{repo}[/revision/{rev}]``."""
    owner = repo.repo_id.split("/")[0]
    return {
        "_id": hashlib.md5(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": owner,
        "sha": repo.commit,
        "lastModified": "2025-01-02T03:04:05.000Z",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": ["openvino"],
        "library_name": "openvino",
        "siblings": [repo.files[p].sibling(blobs and repo.file_metadata) for p in sorted(repo.files)],
        "usedStorage": sum(e.size for e in repo.files.values()),
    }


def _tree(repo: FakeRepo, under: str, recursive: bool) -> list[dict[str, Any]]:
    """The JSON of ``GET /api/models/{repo}/tree/{rev}/{under}``: files and folders, depth-first."""
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(repo.files):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, {"type": "directory", "oid": git_blob_sha1(folder.encode()),
                                            "size": 0, "path": folder})
        if recursive or len(parts) == 1:
            entries[path] = repo.files[path].tree_entry()
    return list(entries.values())
