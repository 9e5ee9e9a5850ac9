"""Slow and idle clients: request heads that never complete are closed after 10 s (408), and past
AIPC_MAX_CONNECTIONS open connections a new one gets 503 at once; the server serves on throughout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import LiveServer, start_server
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
CAP = 12


@pytest.fixture(scope="module")
def capped_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("capped")
    server = start_server(demo_models.parent, root / "data", root / "server.log",
                          env={"AIPC_MAX_CONNECTIONS": str(CAP)})
    yield server
    server.stop()


def connect(base_url: str) -> socket.socket:
    url = urlsplit(base_url)
    return socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=20)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_half_sent_heads_are_closed_with_408(capped_server: LiveServer) -> None:
    slow = [connect(capped_server.base_url) for _ in range(CAP // 2)]
    for i, sock in enumerate(slow):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + str(i).encode())  # never finished
    t0 = time.monotonic()
    assert httpx.get(f"{capped_server.base_url}/health").status_code == 200  # others are served meanwhile
    answers = [read_all(sock) for sock in slow]  # each ends: the server closed it
    waited = time.monotonic() - t0
    for sock in slow:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") and b"request_timeout" in a for a in answers), answers[0][:200]
    assert 8 < waited < 15


def test_past_the_cap_a_new_connection_gets_503(capped_server: LiveServer) -> None:
    idle = [connect(capped_server.base_url) for _ in range(CAP)]
    try:
        extra = connect(capped_server.base_url)
        answer = read_all(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
        assert b"retry-after: 1" in answer.lower()
    finally:
        for sock in idle:
            sock.close()
    def serves() -> bool:  # the server notices the closed ones, then serves again
        try:
            return httpx.get(f"{capped_server.base_url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(serves, "serving again")
    assert httpx.get(f"{capped_server.base_url}/health").status_code == 200
