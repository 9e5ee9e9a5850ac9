"""Map every error to one HTTP status and one JSON shape: ``{"error": {message, type, param, code}}``; under
Ollama's ``/api/`` the shape its clients read, ``{"error": "message"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aipc_chat.errors import AipcError, error_body

log = logging.getLogger(__name__)

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


OLLAMA_PREFIX = "/api/"


def shaped(request: Request | None, body: dict[str, object]) -> dict[str, object]:
    """The error body for this request's API: Ollama's routes carry the message alone."""
    if request is not None and request.url.path.startswith(OLLAMA_PREFIX):
        error = body["error"]
        return {"error": error["message"] if isinstance(error, dict) else error}
    return body


def error_response(exc: AipcError, request: Request | None = None) -> JSONResponse:
    """The HTTP response for one of our errors."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(shaped(request, exc.to_dict()), status_code=exc.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "Invalid request."))
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one shape."""

    @app.exception_handler(AipcError)
    async def _aipc(request: Request, exc: AipcError) -> JSONResponse:
        if exc.status >= 500 and exc.retry_after is None:
            log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(shaped(request, error_body(message, "invalid_request_error", param=param,
                                                       code="invalid_value")), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(exc.detail), _HTTP_TYPES.get(exc.status_code, "invalid_request_error"))
        return JSONResponse(shaped(request, body), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(shaped(request, error_body("Internal server error.", "server_error",
                                                       code="internal_error")), 500)
