"""Who is calling: bearer tokens for the API, a session cookie for the pages, CSRF tokens for
forms, and a limit on log-in attempts.

The API takes only bearer tokens; the pages only their cookie. Both end in the same place: a
per-request `Facetrail` handle acting as the token's user, so the service checks the role and
the policy exactly as it does for the CLI. The session cookie holds the same kind of token the
API uses (HttpOnly, SameSite=Strict, Secure when configured), and a form's CSRF token is an
HMAC of that session token under a secret kept in the data directory, so a page of another
site can neither read nor forge it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request

from facetrail.errors import AuthenticationError
from facetrail.files import write_atomic
from facetrail.service.app import Facetrail
from facetrail.web.problems import HttpProblem

SESSION_COOKIE = "facetrail_session"
SECRET_FILE = "web-secret"


def load_secret(data: Path) -> bytes:
    """The data directory's secret for CSRF tokens, made on first use (mode 0600)."""
    path = data / SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    write_atomic(path, secret)
    os.chmod(path, 0o600)
    return secret


def csrf_token(secret: bytes, session_token: str) -> str:
    return hmac.new(secret, session_token.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, session_token: str | None, offered: str | None) -> bool:
    if not session_token or not offered:
        return False
    return hmac.compare_digest(csrf_token(secret, session_token), offered)


class LoginLimiter:
    """At most `attempts` failed log-ins per name and per client address in `window`
    seconds; further attempts are refused (429) until the window has moved on."""

    def __init__(self, attempts: int = 5, window: float = 300.0) -> None:
        self.attempts, self.window = attempts, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, name: str, client: str) -> tuple[str, str]:
        return f"name:{name.lower()}", f"addr:{client}"

    def check(self, name: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in self._keys(name, client):
                seen = self._failures.get(key)
                while seen and now - seen[0] > self.window:
                    seen.popleft()
                if seen and len(seen) >= self.attempts:
                    wait = int(self.window - (now - seen[0])) + 1
                    raise HttpProblem(
                        429,
                        "too many failed log-in attempts; try again later",
                        {"Retry-After": str(wait)},
                    )

    def failed(self, name: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in self._keys(name, client):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, name: str, client: str) -> None:
        with self._lock:
            self._failures.pop(self._keys(name, client)[0], None)


def base(request: Request) -> Facetrail:
    """The application's own handle (no caller): the store and models every request shares."""
    return request.app.state.ft


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthenticationError("use 'Authorization: Bearer <token>'")
    return value.strip()


def api_caller(
    ft: Annotated[Facetrail, Depends(base)],
    authorization: Annotated[str | None, Header()] = None,
) -> Facetrail:
    """A handle acting as the bearer of the request's token. The API takes bearer tokens
    only, never the pages' cookie, so no other site can make a browser call it."""
    token = bearer(authorization)
    handle = ft.as_caller(None)
    if token is None:
        return handle  # the service refuses anything that needs a caller, with 401
    handle.use_token(token)
    return handle


Caller = Annotated[Facetrail, Depends(api_caller)]
