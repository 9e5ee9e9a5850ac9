"""Every error body the server sends is built here, in the shape its API's clients read, and every error maps to one
HTTP status.

    family   paths          body
    openai   everything     ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's; A1111 clients such as
             else           Open WebUI read ``error.message`` too, and /chat, /ready and the web page use it)
    ollama   /api/...       ``{"error": "message"}`` (what Ollama's clients read)

Whole responses (handlers, the ASGI guards, the connection guard) and errors in the middle of a stream (SSE and NDJSON)
take their body from ``error_payload``.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aipc_chat.errors import AipcError, error_body

log = logging.getLogger(__name__)

Family = Literal["openai", "ollama"]
OLLAMA_PREFIX = "/api/"
INTERNAL = "Internal server error."
_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def family(path: str) -> Family:
    """The API family a path belongs to."""
    return "ollama" if path.startswith(OLLAMA_PREFIX) else "openai"


def error_payload(api: Family, message: str, type_: str, *, param: str | None = None,
                  code: str | None = None) -> dict[str, object]:
    """The error body ``api``'s clients read."""
    return {"error": message} if api == "ollama" else error_body(message, type_, param=param, code=code)


def exception_payload(api: Family, exc: BaseException) -> dict[str, object]:
    """The body for an exception: ours as it says; anything else logged, and a generic 500's body (no internals)."""
    if isinstance(exc, AipcError):
        return error_payload(api, exc.message, exc.type, param=exc.param, code=exc.code)
    log.error("request failed", exc_info=exc)
    return error_payload(api, INTERNAL, "server_error", code="internal_error")


def error_response(exc: AipcError, request: Request | None = None) -> JSONResponse:
    """The HTTP response for one of our errors."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    api = family(request.url.path) if request is not None else "openai"
    return JSONResponse(exception_payload(api, exc), status_code=exc.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "Invalid request."))
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into its API's shape."""

    @app.exception_handler(AipcError)
    async def _aipc(request: Request, exc: AipcError) -> JSONResponse:
        if exc.status >= 500 and exc.retry_after is None:
            log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_payload(family(request.url.path), message, "invalid_request_error", param=param,
                                          code="invalid_value"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message, code = str(exc.detail), None
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):  # no route: say so
            message = (f"{request.method} {request.url.path} is not supported by aipc-chat (see /docs for its "
                       "endpoints).")
            code = "unsupported_endpoint"
        body = error_payload(family(request.url.path), message,
                             _HTTP_TYPES.get(exc.status_code, "invalid_request_error"), code=code)
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_payload(family(request.url.path), INTERNAL, "server_error", code="internal_error"),
                            500)
