"""The database stall watch without a server: a watched call blocked on a connection's socket past the limit has
the socket shut down under it (its read ends), a connection closed meanwhile is left alone, and nested calls are
one call. The PostgreSQL case, through a frozen relay, is in tests/integration/test_history_postgres.py."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine

from aipc_chat.db import StallWatch
from tests.waiting import HANG


@dataclass
class FakePGconn:
    socket: int


@dataclass(eq=False)  # hashable, as a weak set holds it
class FakeConnection:
    """What the watch reads of a psycopg connection."""

    pgconn: FakePGconn
    closed: bool = False


def watch(limit: float = 0.2) -> StallWatch:
    return StallWatch(create_engine("sqlite://"), "test database", limit)


def test_a_call_blocked_past_the_limit_has_its_socket_shut_down() -> None:
    stall = watch()
    ours, server = socket.socketpair()
    bystander, its_peer = socket.socketpair()
    conns = [FakeConnection(FakePGconn(ours.fileno())),
             FakeConnection(FakePGconn(bystander.fileno()), closed=True)]  # closed: its number is not to touch
    for conn in conns:  # (held here: the watch holds connections weakly)
        stall.connected(conn)
    got: list[bytes] = []

    def blocked_call() -> None:
        with stall.call(), stall.call():  # nested: one call
            got.append(ours.recv(1))  # the server never answers

    thread = threading.Thread(target=blocked_call)
    thread.start()
    thread.join(HANG)
    try:
        assert not thread.is_alive() and got == [b""]  # the read ended: the socket was shut down
        assert stall.stalls == 1
        its_peer.sendall(b"x")
        assert bystander.recv(1) == b"x"  # the closed connection's number was left alone
        assert stall._steps == {} and stall._depth == {}
    finally:
        stall.close()
        for s in (ours, server, bystander, its_peer):
            s.close()


def test_a_thread_outside_a_call_is_not_watched() -> None:
    stall = watch(limit=0.05)
    stall.step()  # not in a call: nothing to time
    assert stall._steps == {}
    entered, leave = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def call() -> None:
        with stall.call():
            seen["steps"] = dict(stall._steps)
            entered.set()
            leave.wait(HANG)

    thread = threading.Thread(target=call)
    thread.start()
    entered.wait(HANG)
    leave.set()
    thread.join(HANG)
    stall.close()
    assert list(seen["steps"]) == [thread.ident] and stall._steps == {}
