"""Slow and idle clients at the connection level: a deadline for request heads and a cap on open connections.

uvicorn closes a kept-alive connection that stays idle, but a client that sends a request head one byte at a time
(slowloris) holds its connection forever, and any number of connections may be open at once. This protocol is
uvicorn's httptools protocol with two additions: a request head not complete within ``HEAD_TIMEOUT_SECONDS`` of
its first byte (or of the connection) gets ``408`` and the connection is closed; past ``max_connections`` open
connections a new one gets ``503`` with ``Retry-After`` and is closed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aipc_chat.api.errors import error_payload

log = logging.getLogger(__name__)

HEAD_TIMEOUT_SECONDS = 10.0
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s")
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
         b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
# Before a request's path is known: OpenAI's shape (Ollama's clients read its status)
_TIMEOUT_BODY = json.dumps(error_payload("openai", "The request head did not arrive in time.", "invalid_request_error",
                                         code="request_timeout")).encode()
_FULL_BODY = json.dumps(error_payload("openai", "Too many open connections; retry shortly.", "server_busy",
                                      code="too_many_connections")).encode()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and a cap on open connections."""

    max_connections = 256
    head_timeout = HEAD_TIMEOUT_SECONDS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refused a connection: %d open (AIPC_MAX_CONNECTIONS)", len(self.connections) - 1)
            transport.write(_FULL % (len(_FULL_BODY), _FULL_BODY))
            transport.close()
            return
        self._start_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
            self.transport.close()


def guarded_protocol(max_connections: int, head_timeout: float = HEAD_TIMEOUT_SECONDS) -> type[GuardedProtocol]:
    """The protocol class to give uvicorn (``http=``) for these limits."""
    return type("GuardedProtocol", (GuardedProtocol,), {"max_connections": max_connections,
                                                        "head_timeout": head_timeout})
