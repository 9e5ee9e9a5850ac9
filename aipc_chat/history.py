"""Per-user conversation history in SQLite (WAL, full sync, schema migrations): it survives restarts and crashes.

A turn (the user's message and the assistant's answer) is written in one transaction once it has an answer, so a
crash mid-turn loses at most that turn and never leaves half of one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipc_chat.errors import StorageError

DEFAULT_CONVERSATION = "default"


def _run(db: sqlite3.Connection, script: str) -> None:
    """Run statements one by one (executescript would commit the migration's transaction half-way)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1_initial(db: sqlite3.Connection) -> None:
    _run(db, """
        CREATE TABLE conversations (
            user_id TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (user_id, id));
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), content TEXT NOT NULL,
            reasoning TEXT, image_urls TEXT, image_prompt TEXT, created REAL NOT NULL);
        CREATE INDEX messages_by_conversation ON messages (user_id, conversation_id, id);
    """)


def _m2_image_names(db: sqlite3.Connection) -> None:
    """Store image names, not URL paths: the HTTP layer makes URLs (``/images/NAME.png`` -> ``NAME``)."""
    db.execute("ALTER TABLE messages ADD COLUMN image_names TEXT")
    rows = db.execute("SELECT id, image_urls FROM messages WHERE image_urls IS NOT NULL").fetchall()
    for message_id, urls in rows:
        names = [u.rsplit("/", 1)[-1].removesuffix(".png") for u in json.loads(urls) or []]
        db.execute("UPDATE messages SET image_names = ? WHERE id = ?", (json.dumps(names), message_id))


def _m3_image_state(db: sqlite3.Connection) -> None:
    """How an answer's picture stands (pending, done, failed, cancelled, interrupted), so history never lists a
    picture that does not exist."""
    db.execute("ALTER TABLE messages ADD COLUMN image_state TEXT")
    db.execute("UPDATE messages SET image_state = 'done' WHERE image_names IS NOT NULL AND image_names != '[]'")


# Append-only: each function moves the schema one version on (PRAGMA user_version counts them).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1_initial, _m2_image_names, _m3_image_state]
SHOWN_STATES = (None, "done")  # the picture exists: its URLs are listed


@dataclass(frozen=True)
class Message:
    """One stored message."""

    role: str
    content: str
    created: float
    reasoning: str | None = None
    image_names: list[str] = field(default_factory=list)
    image_prompt: dict[str, Any] | None = None
    image_state: str | None = None  # pending | done | failed | cancelled | interrupted | filtered (None: no picture)

    def as_dict(self, url: Callable[[str], str]) -> dict[str, Any]:
        """The JSON form, each image name made a URL by ``url``; only pictures that exist are listed."""
        out: dict[str, Any] = {"role": self.role, "content": self.content, "created": self.created}
        if self.role == "assistant":
            names = self.image_names if self.image_state in SHOWN_STATES else []
            out.update(reasoning=self.reasoning, image_urls=[url(n) for n in names], image_prompt=self.image_prompt,
                       image_state=self.image_state)
        return out


@dataclass(frozen=True)
class Turn:
    """A complete exchange to store."""

    user_message: str
    answer: str
    reasoning: str | None = None
    image_names: list[str] = field(default_factory=list)
    image_prompt: dict[str, Any] | None = None
    image_state: str | None = None


class HistoryStore:
    """Thread-safe access to the history database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # laptops lose power: a stored turn must survive it
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    migration(self._db)
                    self._db.execute(f"PRAGMA user_version={number}")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock for a write; a write the disk refuses (full, read-only, I/O error) is a StorageError."""
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as exc:
                raise StorageError(f"The conversation history could not be saved ({exc}): free some disk space or "
                                   f"check that {self.path.parent} is writable. What is already stored is kept."
                                   ) from None

    @property
    def schema_version(self) -> int:
        """The migrations applied."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def add_turn(self, user_id: str, conversation_id: str, turn: Turn) -> int:
        """Store the user's message and the answer together, in one transaction; the answer's message id."""
        now = time.time()
        with self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO conversations (user_id, id, title, created, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (user_id, id) DO UPDATE SET updated = excluded.updated",
                    (user_id, conversation_id, turn.user_message[:80], now, now))
                insert = ("INSERT INTO messages (user_id, conversation_id, role, content, reasoning, image_names, "
                          "image_prompt, image_state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
                self._db.execute(insert, (user_id, conversation_id, "user", turn.user_message, None, None, None, None,
                                          now))
                cursor = self._db.execute(insert, (user_id, conversation_id, "assistant", turn.answer, turn.reasoning,
                                                   json.dumps(turn.image_names), json.dumps(turn.image_prompt),
                                                   turn.image_state, now))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return int(cursor.lastrowid or 0)

    def set_images(self, message_id: int, names: list[str], image_prompt: dict[str, Any] | None,
                   state: str) -> None:
        """Record how an answer's picture ended: its state, its names (none unless done), the seed it used."""
        with self._writing():
            self._db.execute("UPDATE messages SET image_names = ?, image_prompt = ?, image_state = ? WHERE id = ?",
                             (json.dumps(names if state == "done" else []), json.dumps(image_prompt), state,
                              message_id))

    def interrupt_pending(self) -> int:
        """At start: pictures still pending were in flight when the process died; mark them interrupted."""
        with self._writing():
            cursor = self._db.execute("UPDATE messages SET image_state = 'interrupted', image_names = '[]' "
                                      "WHERE image_state = 'pending'")
        return int(cursor.rowcount)

    def messages(self, user_id: str, conversation_id: str, limit: int | None = None) -> list[Message]:
        """The conversation's messages, oldest first; with ``limit``, only the last ``limit`` of them."""
        sql = ("SELECT role, content, created, reasoning, image_names, image_prompt, image_state FROM messages "
               "WHERE user_id = ? AND conversation_id = ? ORDER BY id DESC")
        args: tuple[Any, ...] = (user_id, conversation_id)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Message(role, content, created, reasoning, json.loads(names) if names else [],
                        json.loads(prompt) if prompt else None, state)
                for role, content, created, reasoning, names, prompt, state in reversed(rows)]

    def conversations(self, user_id: str) -> list[dict[str, Any]]:
        """The user's conversations, most recent first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.title, c.created, c.updated, COUNT(m.id) FROM conversations c "
                "LEFT JOIN messages m ON m.user_id = c.user_id AND m.conversation_id = c.id "
                "WHERE c.user_id = ? GROUP BY c.id ORDER BY c.updated DESC", (user_id,)).fetchall()
        return [{"conversation_id": cid, "title": title, "created": created, "updated": updated, "messages": n}
                for cid, title, created, updated, n in rows]

    def delete(self, user_id: str, conversation_id: str | None = None) -> int:
        """Delete one conversation (or all of the user's); the number of messages removed."""
        where, args = "user_id = ?", [user_id]
        if conversation_id is not None:
            where += " AND {col} = ?"
            args.append(conversation_id)
        with self._writing():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute(f"DELETE FROM messages WHERE {where.format(col='conversation_id')}",
                                     args).rowcount
                self._db.execute(f"DELETE FROM conversations WHERE {where.format(col='id')}", args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return int(n)

    def close(self) -> None:
        """Checkpoint and close."""
        with self._lock:
            self._db.close()
