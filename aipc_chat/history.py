"""Per-user conversation history, in SQLite (a file in the data folder: WAL, full sync) or PostgreSQL, through
``aipc_chat.db`` (one schema, one list of migrations): it survives restarts and crashes.

A turn (the user's message and the assistant's answer) is written in one transaction once it has an answer, so a
crash mid-turn loses at most that turn and never leaves half of one. The transaction's first statement upserts the
conversation's row; on PostgreSQL that row lock makes the turns of one conversation from any number of front ends
queue behind each other, so a turn's two messages are never split by another turn's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update

from aipc_chat.db import MIGRATIONS, Database, conversations, messages, upsert

__all__ = ["DEFAULT_CONVERSATION", "MIGRATIONS", "SHOWN_STATES", "HistoryStore", "Message", "Turn"]

DEFAULT_CONVERSATION = "default"
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
    image_job: str | None = None  # the image job making the answer's picture


@dataclass(frozen=True)
class Removed:
    """What a deletion took: the number of messages, and the names of the pictures they showed."""

    messages: int
    image_names: list[str]


class HistoryStore:
    """Thread-safe access to the history: a SQLite file at ``where`` (a Path), or the given Database."""

    def __init__(self, where: Path | Database) -> None:
        self.db = Database.sqlite(where) if isinstance(where, Path) else where
        # the SQLite file (None on PostgreSQL, whose label names it for messages)
        self.path: Path | None = self.db.path

    @property
    def schema_version(self) -> int:
        """The migrations applied."""
        return self.db.schema_version

    def add_turn(self, user_id: str, conversation_id: str, turn: Turn) -> int:
        """Store the user's message and the answer together, in one transaction; the answer's message id."""
        now = time.time()
        row = {"user_id": user_id, "conversation_id": conversation_id, "created": now}
        with self.db.transaction() as db:
            # first: the conversation's row lock orders this turn after any other of the conversation in flight
            upsert(db, conversations, {"user_id": user_id, "id": conversation_id, "title": turn.user_message[:80],
                                       "created": now, "updated": now}, ["user_id", "id"], ["updated"])
            db.execute(insert(messages).values(**row, role="user", content=turn.user_message))
            answer = db.execute(insert(messages).values(
                **row, role="assistant", content=turn.answer, reasoning=turn.reasoning,
                image_names=json.dumps(turn.image_names), image_prompt=json.dumps(turn.image_prompt),
                image_state=turn.image_state, image_job=turn.image_job).returning(messages.c.id)).scalar_one()
        return int(answer)

    def set_images(self, message_id: int, names: list[str], image_prompt: dict[str, Any] | None,
                   state: str) -> bool:
        """Record how an answer's picture ended: its state, its names (none unless done), the seed it used. False
        when the message is gone (its conversation was deleted while the picture rendered)."""
        with self.db.transaction() as db:
            return bool(db.execute(update(messages).where(messages.c.id == message_id).values(
                image_names=json.dumps(names if state == "done" else []), image_prompt=json.dumps(image_prompt),
                image_state=state)).rowcount)

    def interrupt_pending(self) -> int:
        """Mark every picture still pending interrupted (at a lone server's start: they were in flight when it
        died); how many. A team settles its dead members' pictures itself (``team.Team``)."""
        stmt = (update(messages).where(messages.c.image_state == "pending")
                .values(image_state="interrupted", image_names="[]"))
        with self.db.transaction() as db:
            return int(db.execute(stmt).rowcount)

    def messages(self, user_id: str, conversation_id: str, limit: int | None = None) -> list[Message]:
        """The conversation's messages, oldest first; with ``limit``, only the last ``limit`` of them."""
        m = messages.c
        stmt = (select(m.role, m.content, m.created, m.reasoning, m.image_names, m.image_prompt, m.image_state)
                .where(m.user_id == user_id, m.conversation_id == conversation_id).order_by(m.id.desc()))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.db.connect() as db:
            rows = db.execute(stmt).all()
        return [Message(role, content, created, reasoning, json.loads(names) if names else [],
                        json.loads(prompt) if prompt else None, state)
                for role, content, created, reasoning, names, prompt, state in reversed(rows)]

    def conversations(self, user_id: str) -> list[dict[str, Any]]:
        """The user's conversations, most recent first."""
        c, m = conversations.c, messages.c
        stmt = (select(c.id, c.title, c.created, c.updated, func.count(m.id))
                .select_from(conversations.outerjoin(
                    messages, (m.user_id == c.user_id) & (m.conversation_id == c.id)))
                .where(c.user_id == user_id)
                .group_by(c.user_id, c.id, c.title, c.created, c.updated)
                .order_by(c.updated.desc()))
        with self.db.connect() as db:
            rows = db.execute(stmt).all()
        return [{"conversation_id": cid, "title": title, "created": created, "updated": updated, "messages": n}
                for cid, title, created, updated, n in rows]

    def delete(self, user_id: str, conversation_id: str | None = None) -> Removed:
        """Delete one conversation (or all of the user's): how many messages went, and the names of the pictures
        they showed (for the caller to delete from the image store once the rows are gone)."""
        m = messages.c
        which = m.user_id == user_id
        drop_conversations = delete(conversations).where(conversations.c.user_id == user_id)
        if conversation_id is not None:
            which &= m.conversation_id == conversation_id
            drop_conversations = drop_conversations.where(conversations.c.id == conversation_id)
        # the pictures listed (SHOWN_STATES); one still rendering is deleted when it ends (the orchestrator)
        listed = or_(*(m.image_state.is_(None) if state is None else m.image_state == state for state in SHOWN_STATES))
        with self.db.transaction() as db:
            shown = db.execute(select(m.image_names).where(which & listed & m.image_names.not_in(["[]", ""]))
                               .order_by(m.id)).scalars()
            names = [name for text in shown if text for name in json.loads(text)]
            removed = db.execute(delete(messages).where(which)).rowcount
            db.execute(drop_conversations)
        return Removed(int(removed), names)

    def close(self) -> None:
        """Close the database's pooled connections (the last SQLite one checkpoints the WAL). A database shared with
        others is closed too: close this store after them (a later use would only open new connections)."""
        self.db.close()
