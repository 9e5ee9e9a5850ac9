"""Localhost safety as pure ASGI middleware: Host check (DNS rebinding), Origin check, API key, body size, request id.

One JSON error shape throughout; the checks run before any route, streaming included.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from aipc_chat.api.errors import Family, error_payload, family
from aipc_chat.settings import Settings
from aipc_chat.users import UserKeys

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$")
# Desktop apps' own pages (Electron, Tauri, VS Code webviews), allowed by default as Ollama allows them; not file://
DESKTOP_ORIGIN = re.compile(r"^(app|tauri|vscode-webview|vscode-file)://[A-Za-z0-9._~%+-]+(:\d+)?/?$")
ALLOWED_ORIGIN = re.compile(f"{LOCAL_ORIGIN.pattern}|{DESKTOP_ORIGIN.pattern}")
# The API docs are open too: the pages, their scripts (/docs/assets/) and the schema they render, which says what the
# routes are and nothing about their data; calling a route from them still needs the key.
OPEN_PATHS = ("/health", "/ready", "/images/", "/web/", "/docs", "/redoc", "/openapi.json")
REQUEST_ID = contextvars.ContextVar("request_id", default="-")
USER_SCOPE_KEY = "aipc.user"  # the user a per-user key belongs to (AIPC_USERS_FILE), set on the ASGI scope
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdFilter(logging.Filter):
    """Put the current request id on every log record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


async def _reply(send: Send, status: int, message: str, type_: str, code: str,
                 headers: list[tuple[bytes, bytes]] | None = None, *, api: Family = "openai") -> None:
    body = json.dumps(error_payload(api, message, type_, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


_HOST = re.compile(r"^(?P<name>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?$")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_allowed(host_header: str | None, extra: list[str]) -> bool:
    """Whether a Host header is ``name[:port]`` naming this machine (or a configured name); userinfo
    (``localhost:80@evil.example``), paths and anything else malformed are refused."""
    if "*" in extra:
        return True
    match = _HOST.match((host_header or "").strip().lower())
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        return False
    return match["name"] in LOCAL_HOSTS or match["name"] in extra


def cross_site_write(method: str, origin: str | None, fetch_site: str | None, extra: list[str]) -> str | None:
    """Why a state-changing request is refused as cross-site, or None.

    ``Origin: null`` (sandboxed iframes, ``data:`` and ``file:`` pages) never writes. A browser's
    ``Sec-Fetch-Site: cross-site`` is refused unless the request's Origin is one this server allows (a page on
    ``localhost:3000`` calling ``127.0.0.1:8000`` is cross-site too, and allowed).
    """
    if method not in STATE_CHANGING:
        return None
    if origin == "null":
        return "Requests from an opaque origin (Origin: null) may not change anything here."
    if fetch_site == "cross-site" and (origin is None or not origin_allowed(origin, extra)):
        return "Cross-site requests may not change anything here (Sec-Fetch-Site: cross-site)."
    return None


def origin_allowed(origin: str, extra: list[str]) -> bool:
    """Whether a browser Origin may call the API."""
    return bool(ALLOWED_ORIGIN.match(origin)) or origin.rstrip("/") in extra or "*" in extra


def presented_key(authorization: str | None) -> str | None:
    """The key of ``Bearer KEY``, or the password of ``Basic`` (what A1111 clients such as Open WebUI send)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password
    return None


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether the Authorization header carries KEY (compared in constant time)."""
    given = presented_key(authorization)
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


class GuardMiddleware:
    """Request id, Host and Origin checks, API key (or per-user key) and body-size limit, in that order."""

    def __init__(self, app: ASGIApp, settings: Settings, users: UserKeys | None = None) -> None:
        self.app = app
        self.hosts = settings.extra_hosts
        self.origins = settings.extra_origins
        self.key = settings.api_key.get_secret_value() if settings.api_key else None
        self.users = users
        self.max_body = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and _SAFE_ID.match(incoming) else secrets.token_hex(6)
        token = REQUEST_ID.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self._guarded(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = functools.partial(_reply, send, api=family(str(scope.get("path", ""))))
        if not host_allowed(_header(scope, b"host"), self.hosts):
            log.warning("refused Host %r", _header(scope, b"host"))
            await reply(403, "This server only answers requests addressed to localhost (set "
                         "AIPC_ALLOWED_HOSTS to add names).", "permission_error", "forbidden_host")
            return
        origin = _header(scope, b"origin")
        if origin is not None and origin != "null" and not origin_allowed(origin, self.origins):
            await reply(403, f"Origin {origin} may not call this server (set AIPC_ALLOWED_ORIGINS).",
                         "permission_error", "forbidden_origin")
            return
        refused = cross_site_write(scope.get("method", ""), origin, _header(scope, b"sec-fetch-site"), self.origins)
        if refused is not None:
            log.warning("refused a cross-site %s %s", scope.get("method"), scope.get("path"))
            await reply(403, refused, "permission_error", "forbidden_origin")
            return
        if not self._authenticated(scope):
            await reply(401, "A valid API key is required (Authorization: Bearer KEY).",
                         "authentication_error", "invalid_api_key", [(b"www-authenticate", b"Bearer")])
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await reply(413, too_large(self.max_body), "invalid_request_error", "request_too_large")
            return
        await self.app(scope, _limited(receive, self.max_body), send)

    def _authenticated(self, scope: Scope) -> bool:
        """Whether the request may go on; with per-user keys, the key's user is put on the scope."""
        path = scope.get("path", "")
        open_path = scope.get("method") == "OPTIONS" or path == "/" or path.startswith(OPEN_PATHS)
        if self.users is not None:
            given = presented_key(_header(scope, b"authorization"))
            user = self.users.user_for(given) if given is not None else None
            if user is not None:
                scope[USER_SCOPE_KEY] = user
            return user is not None or open_path
        return open_path or self.key is None or key_matches(_header(scope, b"authorization"), self.key)


def too_large(limit: int) -> str:
    """The 413 message: the limit, and the setting that raises it with the forms it takes."""
    return (f"The request body is larger than {limit} bytes ({limit / 2**20:.1f} MiB), the most AIPC_MAX_BODY_BYTES "
            "allows; the server's operator can raise it (bytes or a size: 32MB, 50MiB).")


def _limited(receive: Receive, limit: int) -> Receive:
    """Count a chunked body too: past the limit the request ends as a 413 (raised as an error the app maps)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped


class BodyTooLarge(StarletteHTTPException):
    """A streamed request body passed the size limit (an HTTP error, so body parsing passes it on as 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))
