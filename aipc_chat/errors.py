"""The project's one error tree; the API maps it to HTTP in one place (``api/errors.py``).

    AipcError                       500 server_error (generic message, details only in the log)
    ├── InvalidRequest              400 invalid_request_error
    │   ├── ContextLengthExceeded   400 code=context_length_exceeded
    │   ├── UnsupportedParameter    400 code=unsupported_parameter
    │   └── ContentFiltered         400 code=content_filter
    ├── Forbidden                   403 permission_error (a per-user key acting as another user)
    ├── NotFound                    404 not_found_error
    │   └── ModelNotFound           404 code=model_not_found
    ├── Busy                        503 code=server_busy, or 429 rate_limit_exceeded (Retry-After)
    ├── NotReady                    503 code=model_not_ready (Retry-After while a model loads or recovers)
    │   ├── MemoryFull              503 code=memory_limit (a model cannot load under AIPC_MEMORY_LIMIT now)
    │   └── NotServed               503 code=model_not_served (this server serves no model of that kind)
    ├── RequestTimeout              504 code=timeout
    ├── Cancelled                   499 (client went away; never sent to a live client)
    ├── EngineFailure               500 code=engine_error
    ├── StorageError                507 code=storage_error (disk full, read-only or failing data folder)
    ├── UpstreamError               502 code=upstream_error (a remote engine failed)
    └── UpstreamUnavailable         503 code=upstream_unavailable (a remote engine is unreachable)
    StartupError                    (start-up and CLI only: one line saying what to fix, exit status 2)
    ├── PortInUse                   the port is taken; checked before any model loads
    ├── UsersFileError              AIPC_USERS_FILE is missing or malformed (aipc_chat/users.py)
    ├── DataDirUnwritable           the data folder cannot be created or written
    └── ModelSetupError             a missing or unusable model, with what to run
        ├── HubUnreachable          offline, HF_HUB_OFFLINE=1, hub down: what is missing and what to run
        ├── HubAccessDenied         gated or private repository: missing, refused or invalid token
        ├── HubRepoNotFound         no such repository, revision or file
        ├── DownloadCorrupted       a downloaded file's size or sha256 differs from the hub's (it was deleted)
        ├── ConversionFailed        optimum-intel could not convert a model
        └── DemoModelError          a demo or benchmark model could not be built, loaded or failed its self-test

Engines raise these; they never know about HTTP. ``error_body`` is the one place the JSON error shape is built.
"""

from __future__ import annotations


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, object]:
    """The one error shape (OpenAI's): ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class AipcError(Exception):
    """Base of every error the server reports to a client."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after  # sent as Retry-After: the client may try again after that many seconds
        if code is not None:
            self.code = code


class InvalidRequest(AipcError):
    """The request is malformed or asks for something out of bounds."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceeded(InvalidRequest):
    """The prompt (plus the requested output) does not fit the model's context."""

    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    """A field we understand but do not support (instead of silently ignoring it)."""

    code = "unsupported_parameter"


class ContentFiltered(InvalidRequest):
    """A safety check refused the content (an image prompt, or the image itself)."""

    code = "content_filter"


class Forbidden(AipcError):
    """The caller's key may not do this (with AIPC_USERS_FILE: another user's data)."""

    status = 403
    type = "permission_error"
    code = "forbidden_user"


class NotFound(AipcError):
    """The thing asked for does not exist."""

    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """The model id is not served here."""

    code = "model_not_found"


class Busy(AipcError):
    """A bounded queue is full: retry later."""

    status = 503
    type = "server_busy"
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1, status: int = 503) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        if status == 429:
            self.type = self.code = "rate_limit_exceeded"


class NotReady(AipcError):
    """The model is still loading (or failed to load)."""

    status = 503
    type = "server_busy"
    code = "model_not_ready"


class MemoryFull(NotReady):
    """Loading a model would exceed the memory limit (Retry-After when another model's use is what stands in
    the way)."""

    code = "memory_limit"


class NotServed(NotReady):
    """This server serves no model of the kind asked for (switched off, or not there at start): no Retry-After, the
    message names the setting that would enable it."""

    code = "model_not_served"


class RequestTimeout(AipcError):
    """The request ran past its time limit and was cancelled."""

    status = 504
    type = "timeout_error"
    code = "timeout"


class Cancelled(AipcError):
    """The request was cancelled (client disconnect, interrupt or shutdown)."""

    status = 499
    type = "cancelled"
    code = "cancelled"


class EngineFailure(AipcError):
    """An engine failed while serving a request; the details are logged, not sent."""

    status = 500
    type = "server_error"
    code = "engine_error"


class StorageError(AipcError):
    """History or an image could not be written (disk full, read-only, I/O error); what is stored stays."""

    status = 507
    type = "storage_error"
    code = "storage_error"


class StoreUnavailable(AipcError):
    """The shared database or object storage cannot be reached now; nothing already stored is lost."""

    status = 503
    type = "storage_error"
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class UpstreamError(AipcError):
    """A remote engine answered with a failure (or something unreadable)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(AipcError):
    """A remote engine cannot be reached."""

    status = 503
    type = "upstream_error"
    code = "upstream_unavailable"


class StartupError(Exception):
    """The server or a command cannot start; the message is one line saying what to fix."""


class PortInUse(StartupError):
    """The port to listen on is taken."""


class DataDirUnwritable(StartupError):
    """The data folder (history, images) cannot be created or written."""


class ModelSetupError(StartupError):
    """A model is missing or unusable at start-up; the message says what to run."""


class HubUnreachable(ModelSetupError):
    """The hub cannot be reached (offline, HF_HUB_OFFLINE=1, network or hub failure) and the model is not here."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message  # why the hub cannot be reached, for a message that lists several models


class HubAccessDenied(ModelSetupError):
    """The repository is gated or private and the token is missing, refused or invalid."""


class HubRepoNotFound(ModelSetupError):
    """The repository, revision or file does not exist on the hub (or is private)."""


class DownloadCorrupted(ModelSetupError):
    """A downloaded file does not match the size or hash the hub reports; it was deleted."""


class ConversionFailed(ModelSetupError):
    """Converting a Hugging Face model to OpenVINO failed."""


class DemoModelError(ModelSetupError):
    """A demo or benchmark model could not be built, loaded or failed its self-test."""
