"""History on a real PostgreSQL shared by several processes (migrations applied once however many start together,
turns of one conversation from two front ends never interleaving, a database that stops answering being a 503 that
keeps its password to itself), and an old SQLite file migrating on open."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import sqlite3
import threading
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, make_url, text

from aipc_chat.db import MIGRATIONS, Database
from aipc_chat.errors import StoreUnavailable
from aipc_chat.history import HistoryStore, Turn
from tests.services import free_port
from tests.waiting import HANG

pytestmark = pytest.mark.integration

TABLES = {"aipc_schema", "conversations", "messages", "image_jobs", "rate_limits", "workers"}
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing shared but the database


def _open_together(url: str, barrier: Barrier, results: Any) -> None:
    barrier.wait()
    database = Database(url)
    results.put(database.schema_version)
    database.close()


def _add_turns(url: str, worker: str, turns: int, barrier: Barrier) -> None:
    database = Database(url)
    store = HistoryStore(database)
    barrier.wait()
    for i in range(turns):
        token = f"{worker}-{i}"
        store.add_turn("dee", "shared", Turn(f"question {token}", f"answer {token}"))
    database.close()


def run(processes: list[Any]) -> None:
    """Start the processes and wait for them; each must exit 0."""
    for process in processes:
        process.start()
    for process in processes:
        process.join(HANG)
    assert [p.exitcode for p in processes] == [0] * len(processes)


def test_migrations_run_once_when_workers_start_together(database_url: str) -> None:
    barrier, results = SPAWN.Barrier(4), SPAWN.Queue()
    run([SPAWN.Process(target=_open_together, args=(database_url, barrier, results)) for _ in range(4)])
    assert sorted(results.get(timeout=HANG) for _ in range(4)) == [len(MIGRATIONS)] * 4
    database = Database(database_url)
    try:
        with database.connect() as db:
            tables = db.execute(text("SELECT table_name FROM information_schema.tables "
                                     "WHERE table_schema = 'public'")).scalars().all()
            versions = db.execute(text("SELECT version FROM aipc_schema")).scalars().all()
        assert sorted(tables) == sorted(TABLES)  # each once
        assert versions == [len(MIGRATIONS)]
        assert database.schema_version == len(MIGRATIONS)
    finally:
        database.close()


def test_two_front_ends_turns_never_interleave(database_url: str) -> None:
    turns, barrier = 40, SPAWN.Barrier(2)
    run([SPAWN.Process(target=_add_turns, args=(database_url, worker, turns, barrier)) for worker in ("a", "b")])
    database = Database(database_url)
    try:
        history = HistoryStore(database)
        stored = history.messages("dee", "shared")
        assert [m.role for m in stored] == ["user", "assistant"] * (2 * turns)
        pairs = [(q.content.removeprefix("question "), a.content.removeprefix("answer "))
                 for q, a in zip(stored[::2], stored[1::2], strict=True)]
        assert all(question == answer for question, answer in pairs), "an answer follows another turn's question"
        assert sorted(q for q, _ in pairs) == sorted(f"{w}-{i}" for w in ("a", "b") for i in range(turns))
        for worker in ("a", "b"):  # each front end's turns in the order it made them
            assert [q for q, _ in pairs if q.startswith(f"{worker}-")] == [f"{worker}-{i}" for i in range(turns)]
        (conversation,) = history.conversations("dee")
        assert conversation["messages"] == 4 * turns
    finally:
        database.close()


class Relay:
    """A TCP relay to the database that can be cut (afterwards its port is closed and the database does not answer)
    or frozen (connections stay open and the kernel takes what is sent, but nothing is passed on or accepted: a
    paused container, a stuck proxy) and thawed."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.flowing = threading.Event()
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            self.flowing.wait()
            try:
                client, _ = self.listener.accept()
            except OSError:  # cut
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # frozen: what arrived is held, unanswered
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Close the port and every connection through it (again: nothing more)."""
        with self.lock:
            if self.listener.fileno() != -1:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
                self.listener.close()
            for end in self.open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self.open.clear()


@pytest.fixture
def relayed_url(database_url: str) -> Iterator[tuple[str, Relay]]:
    """The database's URL through a relay that can be cut, with a password in it (which trust auth ignores)."""
    url = make_url(database_url)
    relay = Relay(int(url.port or 5432))
    yield url.set(port=relay.port, password="s3cret-Pa55").render_as_string(hide_password=False), relay
    relay.cut()


def test_a_database_that_stops_answering_is_a_503_without_the_password(relayed_url: tuple[str, Relay]) -> None:
    url, relay = relayed_url
    database = Database(url)
    try:
        history = HistoryStore(database)
        history.add_turn("dee", "c", Turn("before", "stored"))
        relay.cut()
        for attempt in (lambda: history.add_turn("dee", "c", Turn("after", "lost")),
                        lambda: history.messages("dee", "c")):
            with pytest.raises(StoreUnavailable) as err:
                attempt()
            assert err.value.status == 503 and err.value.code == "store_unavailable"
            assert "s3cret-Pa55" not in err.value.message and "cannot be reached now" in err.value.message
            assert f":{relay.port}/" in err.value.message  # which database it is
    finally:
        database.close()


@pytest.mark.parametrize("step", ["checkout", "before_cursor_execute", "commit"])
def test_a_database_that_freezes_is_a_503_not_a_hang(relayed_url: tuple[str, Relay], step: str) -> None:
    """A server that takes queries and never answers (statement_timeout cannot end a query it never runs, and
    keepalives are acknowledged), frozen as a connection is checked out (its pre-ping), as a statement is sent, or
    as the commit is: the stall watch cuts its connections and the call fails instead of waiting forever (pytest's
    timeout would end this test: through the relay without the watch, a call waited for good); once it thaws,
    service resumes with what was stored."""
    url, relay = relayed_url
    database = Database(url, stall_after=2)
    armed = False

    def freeze(*_: Any, **__: Any) -> None:
        if armed:
            relay.freeze()

    if step != "checkout":  # the relay freezes as the step begins (after the watch's own listener has run)
        event.listen(database.engine, step, freeze)
    try:
        history = HistoryStore(database)
        history.add_turn("dee", "c", Turn("before", "stored"))
        armed = True
        if step == "checkout":  # frozen while the pooled connection is idle: the pre-ping meets it
            relay.freeze()
        try:
            with pytest.raises(StoreUnavailable) as err:
                history.add_turn("dee", "c", Turn("frozen", "never acknowledged"))
            assert err.value.status == 503 and "s3cret-Pa55" not in err.value.message
            assert database._watch is not None and database._watch.stalls >= 1
        finally:
            armed = False
            relay.thaw()
        stored = [m.content for m in history.messages("dee", "c")]
        # A COMMIT the server read after it thawed may have been applied: a 503 is not "not stored" (docs/team.md)
        assert stored in (["before", "stored"], ["before", "stored", "frozen", "never acknowledged"])
        if step != "commit":
            assert stored == ["before", "stored"]
        history.add_turn("dee", "c", Turn("after", "stored too"))
        assert [m.content for m in history.messages("dee", "c")][-2:] == ["after", "stored too"]
    finally:
        database.close()


def test_a_closed_port_at_start_is_a_503_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as err:
        Database(f"postgresql://aipc:s3cret-Pa55@127.0.0.1:{free_port()}/aipc")
    assert err.value.status == 503 and "s3cret-Pa55" not in err.value.message and "***" in err.value.message


# The SQLite schema at version 3, as the raw-sqlite3 history store left it.
V3_SCHEMA = """
    CREATE TABLE conversations (
        user_id TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (user_id, id));
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), content TEXT NOT NULL,
        reasoning TEXT, image_urls TEXT, image_prompt TEXT, created REAL NOT NULL);
    CREATE INDEX messages_by_conversation ON messages (user_id, conversation_id, id);
    ALTER TABLE messages ADD COLUMN image_names TEXT;
    ALTER TABLE messages ADD COLUMN image_state TEXT;
    PRAGMA user_version=3;
"""


def test_a_version_3_sqlite_file_migrates_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V3_SCHEMA)
    db.execute("INSERT INTO conversations VALUES ('dee', 'c', 'draw a fox', 1.0, 2.0)")
    insert = ("INSERT INTO messages (user_id, conversation_id, role, content, reasoning, image_names, image_prompt, "
              "image_state, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    db.execute(insert, ("dee", "c", "user", "draw a fox", None, None, None, None, 1.0))
    db.execute(insert, ("dee", "c", "assistant", "a fox", "foxes are red", '["0123abcd"]', '{"prompt": "a fox"}',
                        "done", 1.5))
    db.execute(insert, ("dee", "c", "user", "and a cat", None, None, None, None, 2.0))
    db.execute(insert, ("dee", "c", "assistant", "a cat", None, '["4567ef"]', '{"prompt": "a cat"}', "pending",
                        2.0))
    db.close()

    store = HistoryStore(path)
    assert store.schema_version == len(MIGRATIONS)
    stored = store.messages("dee", "c")
    assert [(m.role, m.content, m.created) for m in stored] == [
        ("user", "draw a fox", 1.0), ("assistant", "a fox", 1.5), ("user", "and a cat", 2.0),
        ("assistant", "a cat", 2.0)]
    assert stored[1].reasoning == "foxes are red" and stored[1].image_names == ["0123abcd"]
    assert stored[1].image_prompt == {"prompt": "a fox"} and stored[1].image_state == "done"
    assert store.conversations("dee") == [
        {"conversation_id": "c", "title": "draw a fox", "created": 1.0, "updated": 2.0, "messages": 4}]
    assert store.interrupt_pending() == 1  # pending from before jobs were recorded
    store.add_turn("dee", "c", Turn("a dog?", "a dog", image_state="pending", image_job="job-1"))
    assert store.messages("dee", "c")[-1].image_state == "pending"
    store.close()
