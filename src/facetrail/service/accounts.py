"""Users, passwords and API tokens.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended
profile). Tokens are 256 random bits shown once; only their SHA-256 is stored, they expire,
and they can be revoked. A wrong name and a wrong password get the same answer, after the
same work, so the error does not tell which names exist.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facetrail.errors import AuthenticationError, InvalidInputError, NotFoundError
from facetrail.service.access import Caller, Role
from facetrail.service.tables import ApiToken, User
from facetrail.store.models import utcnow

TOKEN_PREFIX = "ft_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the name is unknown, so that both failures cost the same (made on first
    use: hashing at import would slow every command's start)."""
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str
    active: bool
    created_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    id: int
    user: str
    label: str
    created_at: datetime
    expires_at: datetime
    revoked: bool


@dataclass(frozen=True)
class IssuedToken:
    """A new token: `token` is shown once and never stored."""

    token: str
    info: TokenInfo


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            "a user name is 1-100 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit"
        )
    return name


def parse_role(role: object) -> Role:
    try:
        return Role(str(role))
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise InvalidInputError(f"unknown role {role!r}; the roles are: {roles}") from None


def hash_password(password: object, min_length: int) -> str:
    if not isinstance(password, str) or len(password) < min_length:
        raise InvalidInputError(f"a password must be at least {min_length} characters")
    if len(password) > 1024:
        raise InvalidInputError("a password must be at most 1024 characters")
    return _hasher.hash(password)


def user_info(user: User) -> UserInfo:
    return UserInfo(user.id, user.name, user.role, user.active, user.created_at)


def count_users(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(User)) or 0)


def get_user(s: Session, name: str) -> User:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError(f"no user named {name!r}")
    return user


def add_user(s: Session, name: str, role: Role, password_hash: str) -> User:
    check_name(name)
    if s.scalar(select(User.id).where(User.name == name)) is not None:
        raise InvalidInputError(f"a user named {name!r} already exists")
    user = User(name=name, role=role.value, password_hash=password_hash, active=True)
    s.add(user)
    s.flush()
    return user


def check_password(s: Session, name: str, password: str) -> User:
    """The active user with this name and password, or AuthenticationError."""
    user = s.scalar(select(User).where(User.name == name)) if isinstance(name, str) else None
    try:
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None or not user.active:
        raise AuthenticationError("wrong user name or password, or the account is disabled")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_info(row: ApiToken, user: str) -> TokenInfo:
    return TokenInfo(
        row.id, user, row.label, row.created_at, row.expires_at, row.revoked_at is not None
    )


def issue_token(s: Session, user: User, label: str, days: int) -> IssuedToken:
    if not isinstance(label, str) or not 0 < len(label) <= 100:
        raise InvalidInputError("a token label is 1-100 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiToken(
        user_id=user.id,
        token_hash=_digest(token),
        label=label,
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    s.add(row)
    s.flush()
    return IssuedToken(token, _token_info(row, user.name))


def caller_for_token(s: Session, token: object) -> Caller:
    """Who holds this token: refused if unknown, expired, revoked or its user disabled."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise AuthenticationError("that is not a facetrail token")
    row = s.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == _digest(token))
    ).first()
    if row is None:
        raise AuthenticationError("unknown token: log in again")
    tok, user = row
    if tok.revoked_at is not None:
        raise AuthenticationError("this token has been revoked: log in again")
    if tok.expires_at <= utcnow():
        raise AuthenticationError("this token has expired: log in again")
    if not user.active:
        raise AuthenticationError(f"the account {user.name!r} is disabled")
    return Caller(user.id, user.name, Role(user.role), tok.id)


def recheck(s: Session, caller: Caller) -> None:
    """Refuse a caller whose token was revoked, expired or whose account was disabled since
    the handle was opened (a long-lived handle must not outlive its authority)."""
    row = s.execute(
        select(ApiToken.revoked_at, ApiToken.expires_at, User.active)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.id == caller.token_id, User.id == caller.user_id)
    ).first()
    if row is None or row.revoked_at is not None:
        raise AuthenticationError("this token has been revoked: log in again")
    if row.expires_at <= utcnow():
        raise AuthenticationError("this token has expired: log in again")
    if not row.active:
        raise AuthenticationError(f"the account {caller.name!r} is disabled")


def tokens_of(s: Session, user_id: int | None) -> list[TokenInfo]:
    stmt = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
    if user_id is not None:
        stmt = stmt.where(ApiToken.user_id == user_id)
    return [_token_info(t, n) for t, n in s.execute(stmt.order_by(ApiToken.id))]


def revoke(s: Session, token_id: int, user_id: int | None) -> ApiToken:
    """Revoke a token (of `user_id` only, unless None: an administrator's revocation)."""
    row = s.get(ApiToken, token_id)
    if row is None or (user_id is not None and row.user_id != user_id):
        raise NotFoundError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def revoke_all(s: Session, user_id: int) -> int:
    n = 0
    for row in s.scalars(
        select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
    ):
        row.revoked_at = utcnow()
        n += 1
    return n
