"""Per-user API keys (``AIPC_USERS_FILE``): each key belongs to one user id, and the file keeps only hashes.

The file is plain text, one key per line::

    # aipc-chat users: user_id:sha256 of the key, in hex
    alice:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
    bob:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9

Blank lines and lines starting with ``#`` are ignored; a user may have several keys (one line each). User ids
follow the ``/chat`` rule (letters, digits, ``_ . @ -``, at most 64). ``aipc-chat users add NAME`` makes a key,
prints it once and writes its hash; the server re-reads the file when it changes (no restart).

A presented key is hashed and compared with every stored hash in constant time (``hmac.compare_digest``, no early
exit), so neither the keys nor which user a key belongs to can be learnt from timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aipc_chat.errors import StartupError

log = logging.getLogger(__name__)

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")  # as /chat's user_id
_LINE = re.compile(r"^(?P<user>[^:\s]+):(?P<digest>[0-9a-fA-F]{64})$")
HEADER = "# aipc-chat users: one key per line as user_id:sha256-of-the-key (hex). Made by `aipc-chat users add`.\n"


class UsersFileError(StartupError):
    """The users file is missing or malformed."""


def hash_key(key: str) -> str:
    """The hex sha256 of a key, as the users file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class UserKey:
    """One line of the users file."""

    user: str
    digest: bytes  # sha256 of the key


def parse_users(text: str, source: str = "the users file") -> list[UserKey]:
    """The entries of a users file; UsersFileError naming the first bad line."""
    entries: list[UserKey] = []
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise UsersFileError(f"{source}, line {number}: expected user_id:sha256-hex (64 hex digits); "
                                 "`aipc-chat users add NAME` writes a valid line.")
        if not USER_ID.match(match["user"]):
            raise UsersFileError(f"{source}, line {number}: user id {match['user']!r} must be letters, digits, "
                                 "_ . @ - (at most 64).")
        digest = bytes.fromhex(match["digest"])
        if seen.get(digest, match["user"]) != match["user"]:
            raise UsersFileError(f"{source}, line {number}: the same key is given to {seen[digest]} and "
                                 f"{match['user']}.")
        seen[digest] = match["user"]
        entries.append(UserKey(match["user"], digest))
    return entries


def read_users(path: Path) -> list[UserKey]:
    """Read and parse a users file; UsersFileError when it cannot be read or holds no key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"Cannot read AIPC_USERS_FILE {path}: {getattr(exc, 'strerror', None) or exc}. "
                             "Create it with `aipc-chat users add NAME`.") from None
    entries = parse_users(text, str(path))
    if not entries:
        raise UsersFileError(f"AIPC_USERS_FILE {path} holds no key: add one with `aipc-chat users add NAME`.")
    return entries


def lookup(entries: list[UserKey], key: str) -> str | None:
    """The user a key belongs to, or None; every entry is compared, in constant time."""
    digest = hashlib.sha256(key.encode()).digest()
    found: str | None = None
    for entry in entries:
        if hmac.compare_digest(digest, entry.digest) and found is None:
            found = entry.user
    return found


class UserKeys:
    """The users file as the server reads it: loaded at start, re-read when it changes (at most once a second).

    A change that does not parse is logged and the keys read before stay in force.
    """

    def __init__(self, path: Path, recheck_seconds: float = 1.0) -> None:
        self.path = path
        self.recheck_seconds = recheck_seconds
        self._entries = read_users(path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @property
    def users(self) -> list[str]:
        """The user ids with at least one key."""
        return sorted({entry.user for entry in self._entries})

    def user_for(self, key: str) -> str | None:
        """The user the key belongs to, or None."""
        self._maybe_reload()
        return lookup(self._entries, key)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.recheck_seconds:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp is None or stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._entries = read_users(self.path)
            except UsersFileError as exc:
                log.error("%s; the keys read before stay in force", exc)
                return
            log.info("re-read %s: %d key(s) for %d user(s)", self.path, len(self._entries), len(self.users))


def add_user(path: Path, user: str) -> str:
    """Make a new key for ``user``, store its hash in the users file (created if missing), return the key.

    Other users' lines and the user's earlier keys stay; the file is replaced atomically and, on POSIX, readable by
    its owner only.
    """
    if not USER_ID.match(user):
        raise UsersFileError(f"User id {user!r} must be letters, digits, _ . @ - (at most 64).")
    key = "aipc-" + secrets.token_urlsafe(32)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    parse_users(text, str(path))  # refuse to append to a file that does not parse
    _write(path, text + f"{user}:{hash_key(key)}\n")
    return key


def remove_user(path: Path, user: str) -> int:
    """Delete every key of ``user``; how many were deleted."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip().partition(":")[0] != user or line.lstrip().startswith("#")]
    if len(kept) != len(lines):
        _write(path, "".join(kept))
    return len(lines) - len(kept)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    if os.name != "nt":
        tmp.chmod(0o600)
    os.replace(tmp, path)
