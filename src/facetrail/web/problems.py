"""Errors over HTTP: every refusal is an RFC 9457 problem+json body with the right status.

The same exception hierarchy the CLI turns into one line and an exit code becomes a status
here; messages are the service's own (names and reasons, never biometric data).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from facetrail.errors import (
    AuthenticationError,
    FacetrailError,
    InvalidInputError,
    MediaError,
    ModelError,
    NoFaceError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
    StoreError,
)

PROBLEM = "application/problem+json"

STATUS: dict[type[FacetrailError], int] = {
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    PolicyError: 409,
    InvalidInputError: 400,
    MediaError: 415,
    NoFaceError: 422,
    ModelError: 500,
    StoreError: 503,
}


class HttpProblem(FacetrailError):
    """A refusal that only HTTP has (an upload too large, too many log-in attempts)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.headers = headers or {}


def status_of(exc: FacetrailError) -> int:
    if isinstance(exc, HttpProblem):
        return exc.status
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]  # type: ignore[index]
    return 500


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


async def facetrail_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FacetrailError)
    status = status_of(exc)
    headers = dict(getattr(exc, "headers", {}) or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return problem(status, type(exc).__name__, str(exc), headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Field locations and messages only: the rejected input itself is not echoed back.
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()
    ]
    return problem(422, "RequestValidationError", "; ".join(parts) or "invalid request")


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, "HTTPException", str(exc.detail), exc.headers)
