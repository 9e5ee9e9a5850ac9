"""The SQLite history store: turns, windows, conversations, deletion, migrations, durability across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aipc_chat.history import MIGRATIONS, HistoryStore, Turn


def test_turns_round_trip_in_order(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
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


def test_only_pictures_that_exist_are_listed(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
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


def test_conversations_and_delete(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    store.add_turn("u1", "a", Turn("1", "one"))
    store.add_turn("u1", "b", Turn("2", "two"))
    store.add_turn("u2", "a", Turn("3", "three"))
    convs = store.conversations("u1")
    assert [c["conversation_id"] for c in convs] == ["b", "a"] and convs[0]["messages"] == 2
    assert store.delete("u1", "a") == 2
    assert [c["conversation_id"] for c in store.conversations("u1")] == ["b"]
    assert store.delete("u1") == 2
    assert store.conversations("u1") == [] and len(store.messages("u2", "a")) == 2


def test_migrations_run_once(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    HistoryStore(path).add_turn("u", "c", Turn("q", "a"))
    again = HistoryStore(path)
    assert again.schema_version == len(MIGRATIONS)
    assert len(again.messages("u", "c")) == 2


def test_version_1_urls_become_names(tmp_path: Path) -> None:
    """A database written before names were stored (schema 1: URL paths) reads back the same images."""
    import sqlite3

    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO messages (user_id, conversation_id, role, content, image_urls, created) "
               "VALUES ('u', 'c', 'assistant', 'a fox', '[\"/images/0123abcd.png\"]', 1.0)")
    db.close()
    store = HistoryStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.messages("u", "c")[0].image_names == ["0123abcd"]


def test_a_killed_writer_leaves_earlier_turns_intact(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    code = (f"import os; from pathlib import Path; from aipc_chat.history import HistoryStore, Turn\n"
            f"s = HistoryStore(Path({str(path)!r}))\n"
            "for i in range(20): s.add_turn('u', 'c', Turn(f'q{i}', f'a{i}'))\n"
            "os._exit(9)  # no close, no checkpoint: like a crash\n")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    msgs = HistoryStore(path).messages("u", "c")
    assert len(msgs) == 40 and msgs[-1].content == "a19"
