"""HTTP errors: the one mapping from library errors to OpenAI-style JSON responses.

Every error leaves the service as `{"error": {"message", "type", "code"}}`. Library
errors (`datastore.errors`) map by class; `ApiError` carries errors that only exist at
the HTTP edge (authentication, bad routes). Registered once by the app factory.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from datastore.errors import (
    CapacityError,
    ConflictError,
    CorruptDatastoreError,
    InvalidInputError,
    ModelMismatchError,
    NotFoundError,
    SiloError,
    UnavailableError,
)

log = logging.getLogger("server")

# library error class -> (HTTP status, OpenAI error type); first match wins
STATUS: tuple[tuple[type[SiloError], int, str], ...] = (
    (InvalidInputError, 400, "invalid_request_error"),
    (NotFoundError, 404, "not_found_error"),
    (ConflictError, 409, "conflict_error"),
    (ModelMismatchError, 409, "conflict_error"),
    (CapacityError, 429, "rate_limit_error"),
    (CorruptDatastoreError, 503, "service_unavailable_error"),
    (UnavailableError, 503, "service_unavailable_error"),
)


class ApiError(Exception):
    """An error decided at the HTTP edge (auth, routing) with its status and type."""

    def __init__(self, status: int, message: str, type: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = headers


def error_body(message: str, type: str, code: str | int | None) -> dict[str, object]:
    return {"error": {"message": message, "type": type, "code": code}}


def _json(status: int, message: str, type: str, code: str | int | None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, code), status_code=status, headers=headers)


def status_of(exc: SiloError) -> tuple[int, str]:
    """(HTTP status, error type) of a library error."""
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 400, "invalid_request_error"  # a SiloError is the caller's problem by default


def stream_error(exc: BaseException) -> dict[str, object]:
    """The error event of a stream that fails after its 200 went out: the body the same
    error would have had as a response (its type names the status class)."""
    if isinstance(exc, SiloError):
        return error_body(str(exc), status_of(exc)[1], exc.__class__.__name__)
    log.error("a streamed request failed", exc_info=exc)
    return error_body("internal error", "server_error", "internal_error")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the mapping: library errors, edge errors, validation, HTTP, the rest."""

    @app.exception_handler(SiloError)
    async def silo_error(request: Request, exc: SiloError) -> JSONResponse:
        status, kind = status_of(exc)
        headers = {"Retry-After": str(retry_after_s)} if status in (429, 503) else None
        return _json(status, str(exc), kind, exc.__class__.__name__, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.message, exc.type, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(400, _validation_message(exc), "invalid_request_error",
                     "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _json(exc.status_code, str(exc.detail), kind, exc.status_code,
                     dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal error", "server_error", "internal_error")
