"""The history store: turns, windows, conversations, deletion, pictures in flight, on SQLite and PostgreSQL alike;
migrations, full-disk errors and durability across processes on SQLite."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, event

from aipc_chat.db import Database, Dialect
from aipc_chat.errors import StorageError
from aipc_chat.history import MIGRATIONS, HistoryStore, Removed, Turn


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    """An empty store on each database (PostgreSQL: a fresh database on the session's server)."""
    if request.param == "sqlite":
        history = HistoryStore(tmp_path / "h.sqlite3")
        yield history
        history.close()
        return
    database = Database(request.getfixturevalue("database_url"))
    history = HistoryStore(database)
    assert history.path is None
    yield history
    database.close()


def test_turns_round_trip_in_order(store: HistoryStore) -> None:
    store.add_turn("u1", "default", Turn("hi", "hello", reasoning="greeting"))
    store.add_turn("u1", "default", Turn("draw a cat", "here", image_names=["a"],
                                         image_prompt={"prompt": "a cat"}))
    msgs = store.messages("u1", "default")
    assert [(m.role, m.content) for m in msgs] == [("user", "hi"), ("assistant", "hello"), ("user", "draw a cat"),
                                                   ("assistant", "here")]
    assert msgs[1].reasoning == "greeting"
    assert msgs[3].image_names == ["a"] and msgs[3].image_prompt == {"prompt": "a cat"}
    assert msgs[3].as_dict(lambda n: f"/x/{n}.png")["image_urls"] == ["/x/a.png"]
    assert [m.content for m in store.messages("u1", "default", limit=2)] == ["draw a cat", "here"]
    assert store.messages("u2", "default") == []


def test_the_answers_id_is_returned(store: HistoryStore) -> None:
    first = store.add_turn("u", "c", Turn("one", "1"))
    second = store.add_turn("u", "c", Turn("two", "2"))
    assert second == first + 2  # the question in between
    store.set_images(first, ["n"], {"seed": 3}, "done")
    assert store.messages("u", "c")[1].image_names == ["n"] and store.messages("u", "c")[3].image_names == []


def test_only_pictures_that_exist_are_listed(store: HistoryStore) -> None:
    ids = [store.add_turn("u", "c", Turn(f"draw {i}", "here", image_names=[f"n{i}"], image_state="pending"))
           for i in range(4)]
    store.set_images(ids[0], ["n0"], None, "done")
    store.set_images(ids[1], ["n1"], None, "failed")
    store.set_images(ids[2], ["n2"], None, "cancelled")
    assert store.interrupt_pending() == 1  # the fourth: in flight when the process died
    answers = [m for m in store.messages("u", "c") if m.role == "assistant"]
    assert [m.image_state for m in answers] == ["done", "failed", "cancelled", "interrupted"]
    assert [m.as_dict(str)["image_urls"] for m in answers] == [["n0"], [], [], []]
    assert store.interrupt_pending() == 0


def test_conversations_and_delete(store: HistoryStore) -> None:
    store.add_turn("u1", "a", Turn("1", "one"))
    store.add_turn("u1", "b", Turn("2", "two"))
    store.add_turn("u1", "b", Turn("2 again", "two again"))
    store.add_turn("u2", "a", Turn("3", "three"))
    convs = store.conversations("u1")
    assert [c["conversation_id"] for c in convs] == ["b", "a"] and convs[0]["messages"] == 4
    assert convs[0]["title"] == "2" and convs[0]["updated"] >= convs[0]["created"]
    assert store.delete("u1", "a") == Removed(2, [])
    assert [c["conversation_id"] for c in store.conversations("u1")] == ["b"]
    assert store.delete("u1") == Removed(4, [])
    assert store.conversations("u1") == [] and len(store.messages("u2", "a")) == 2


def test_delete_names_the_pictures_its_answers_showed(store: HistoryStore) -> None:
    shown = store.add_turn("u", "a", Turn("draw", "here", image_names=["p1"], image_state="pending"))
    store.set_images(shown, ["p1", "p2"], None, "done")
    failed = store.add_turn("u", "a", Turn("draw", "no", image_names=["p3"], image_state="pending"))
    store.set_images(failed, ["p3"], None, "failed")  # never shown: no name is kept
    store.add_turn("u", "a", Turn("hi", "hello"))
    store.add_turn("u", "a", Turn("draw", "soon", image_names=["p6"], image_state="pending"))  # ends later
    store.add_turn("u", "b", Turn("draw", "here", image_names=["p4"], image_state="done"))
    store.add_turn("v", "a", Turn("draw", "here", image_names=["p5"], image_state="done"))
    assert store.delete("u", "a") == Removed(8, ["p1", "p2"])
    assert store.delete("u") == Removed(2, ["p4"])
    assert store.delete("u") == Removed(0, [])
    assert store.messages("v", "a")[1].image_names == ["p5"]


def test_migrations_run_once(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    HistoryStore(path).add_turn("u", "c", Turn("q", "a"))
    again = HistoryStore(path)
    assert again.schema_version == len(MIGRATIONS) and again.path == path
    assert len(again.messages("u", "c")) == 2


def test_version_1_urls_become_names(tmp_path: Path) -> None:
    """A database written before names were stored (schema 1: URL paths) reads back the same images."""
    path = tmp_path / "h.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as db:
        MIGRATIONS[0](db, Dialect("sqlite"))
        db.exec_driver_sql("PRAGMA user_version=1")
        db.exec_driver_sql("INSERT INTO messages (user_id, conversation_id, role, content, image_urls, created) "
                           "VALUES ('u', 'c', 'assistant', 'a fox', '[\"/images/0123abcd.png\"]', 1.0)")
    engine.dispose()
    store = HistoryStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.messages("u", "c")[0].image_names == ["0123abcd"]


def test_a_refused_write_is_a_storage_error_and_keeps_what_is_stored(tmp_path: Path) -> None:
    """A write SQLite refuses (here: a read-only database) is a 507 naming the folder; earlier turns stay."""
    path = tmp_path / "data" / "h.sqlite3"
    store = HistoryStore(path)
    store.add_turn("u", "c", Turn("kept", "yes"))

    def read_only(db: Connection) -> None:
        db.exec_driver_sql("PRAGMA query_only=ON")

    event.listen(store.db.engine, "begin", read_only)
    with pytest.raises(StorageError) as err:
        store.add_turn("u", "c", Turn("lost", "no"))
    assert err.value.status == 507
    assert err.value.message.startswith("The conversation history could not be saved (attempt to write a readonly")
    assert f"free some disk space or check that {path.parent} is writable" in err.value.message
    event.remove(store.db.engine, "begin", read_only)
    store.db.engine.dispose()  # connections without the pragma
    assert [m.content for m in store.messages("u", "c")] == ["kept", "yes"]
    store.add_turn("u", "c", Turn("again", "yes"))
    assert len(store.messages("u", "c")) == 4


def test_a_killed_writer_leaves_earlier_turns_intact(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    code = (f"import os; from pathlib import Path; from aipc_chat.history import HistoryStore, Turn\n"
            f"s = HistoryStore(Path({str(path)!r}))\n"
            "for i in range(20): s.add_turn('u', 'c', Turn(f'q{i}', f'a{i}'))\n"
            "os._exit(9)  # no close, no checkpoint: like a crash\n")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    msgs = HistoryStore(path).messages("u", "c")
    assert len(msgs) == 40 and msgs[-1].content == "a19"
