"""The users file: its format, lookups, adding and removing keys, re-reading a changed file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from aipc_chat.cli import main
from aipc_chat.users import UserKeys, UsersFileError, add_user, hash_key, lookup, parse_users, read_users, remove_user


def test_lines_comments_and_several_keys_per_user() -> None:
    text = f"# comment\n\nalice:{hash_key('a1')}\n  alice:{hash_key('a2').upper()}  \nbob:{hash_key('b')}\n"
    entries = parse_users(text)
    assert [e.user for e in entries] == ["alice", "alice", "bob"]
    assert [lookup(entries, k) for k in ("a1", "a2", "b", "c", "", "A1")] == ["alice", "alice", "bob", None, None,
                                                                               None]


@pytest.mark.parametrize(("text", "said"), [
    ("alice\n", "line 1"),
    ("alice:abc\n", "64 hex"),
    (f"# x\nal ice:{hash_key('k')}\n", "line 2"),
    (f"-alice:{hash_key('k')}\n", "letters, digits"),
    (f"alice:{hash_key('k')}\nbob:{hash_key('k')}\n", "same key"),
])
def test_malformed_files_name_the_line(text: str, said: str) -> None:
    with pytest.raises(UsersFileError, match=said):
        parse_users(text)


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="Cannot read"):
        read_users(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(UsersFileError, match="holds no key"):
        read_users(tmp_path / "empty")


def test_add_and_remove(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "users.txt"
    first, second, other = add_user(path, "alice"), add_user(path, "alice"), add_user(path, "bob")
    assert len({first, second, other}) == 3 and all(len(k) > 40 for k in (first, second, other))
    assert first not in path.read_text()
    entries = read_users(path)
    assert [lookup(entries, k) for k in (first, second, other)] == ["alice", "alice", "bob"]
    if os.name != "nt":
        assert path.stat().st_mode & 0o077 == 0  # the owner's alone
    assert remove_user(path, "alice") == 2 and remove_user(path, "nobody") == 0
    assert [lookup(read_users(path), k) for k in (first, other)] == [None, "bob"]
    with pytest.raises(UsersFileError):
        add_user(path, "no:colons")


def test_a_changed_file_is_read_again_and_a_broken_one_ignored(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    alice = add_user(path, "alice")
    keys = UserKeys(path, recheck_seconds=0)
    assert keys.user_for(alice) == "alice"
    bob = add_user(path, "bob")
    assert keys.user_for(bob) == "bob" and keys.users == ["alice", "bob"]
    time.sleep(0.01)
    path.write_text(path.read_text() + "garbage\n")
    assert keys.user_for(alice) == "alice"  # the keys read before stay in force
    remove_user(path, "bob")  # still broken by the garbage line: nothing changes
    assert keys.user_for(bob) == "bob"


def test_the_users_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.txt"
    assert main(["users", "add", "dana", "--file", str(path)]) == 0
    key = capsys.readouterr().out.splitlines()[1]
    assert lookup(read_users(path), key) == "dana"
    assert main(["users", "list", "--file", str(path)]) == 0 and "dana\t1 key(s)" in capsys.readouterr().out
    assert main(["users", "add", "--file", str(path)]) == 2
    assert main(["users", "remove", "dana", "--file", str(path)]) == 0
    assert main(["users", "remove", "dana", "--file", str(path)]) == 1
