"""Watchlists: named, authorised, expiring subsets of the gallery.

A watchlist is created with a purpose and an expiry no further ahead than policy allows;
each member is added with the reason that person is on it. It can be searched (or, later,
deployed live) only while an authoriser's authorisation stands and it has not expired.
Any change to its members withdraws the authorisation, so what an authoriser approved is
exactly what is searched; the authoriser cannot be the person who last changed it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from facetrail.errors import InvalidInputError, NotFoundError, PolicyError
from facetrail.service.access import Caller
from facetrail.service.cases import check_text
from facetrail.service.tables import User, Watchlist, WatchlistMember
from facetrail.store.models import Subject, utcnow

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:-]{0,99}")


@dataclass(frozen=True)
class MemberInfo:
    subject: str
    reason: str
    added_by: str
    added_at: datetime


@dataclass(frozen=True)
class WatchlistInfo:
    name: str
    purpose: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    authorised_by: str | None
    authorised_at: datetime | None
    status: str  # "authorised", "awaiting authorisation" or "expired"
    members: list[MemberInfo]


def status(w: Watchlist) -> str:
    if w.expires_at <= utcnow():
        return "expired"
    return "authorised" if w.authorised_by is not None else "awaiting authorisation"


def get(s: Session, name: str) -> Watchlist:
    w = s.scalar(select(Watchlist).where(Watchlist.name == name))
    if w is None:
        raise NotFoundError(f"no watchlist named {name!r}")
    return w


def create(
    s: Session, caller: Caller, name: str, purpose: str, expires_at: datetime, max_days: int
) -> Watchlist:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name != name.strip():
        raise InvalidInputError(
            "a watchlist name is 1-100 letters, digits, spaces, '.', '_', ':' or '-'"
        )
    if s.scalar(select(Watchlist.id).where(Watchlist.name == name)) is not None:
        raise InvalidInputError(f"a watchlist named {name!r} already exists")
    _check_expiry(expires_at, max_days)
    w = Watchlist(
        name=name,
        purpose=check_text(purpose, "the purpose"),
        created_by=caller.user_id,
        changed_by=caller.user_id,
        expires_at=expires_at,
    )
    s.add(w)
    s.flush()
    return w


def _check_expiry(expires_at: datetime, max_days: int) -> None:
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise InvalidInputError("a watchlist's expiry must be a time with a time zone")
    now = utcnow()
    if expires_at <= now:
        raise InvalidInputError("a watchlist's expiry must be in the future")
    if (expires_at - now).total_seconds() > max_days * 86400:
        raise PolicyError(f"policy allows watchlists of at most {max_days} days")


def _subject_ids(s: Session, names: list[str]) -> dict[str, int]:
    found = dict(s.execute(select(Subject.name, Subject.id).where(Subject.name.in_(names))).all())
    missing = [n for n in names if n not in found]
    if missing:
        raise NotFoundError(f"no subject named {missing[0]!r}")
    return found


def add_members(
    s: Session, caller: Caller, w: Watchlist, subjects: list[str], reason: str
) -> list[int]:
    """Add subjects (each with `reason`); returns the ids actually added."""
    reason = check_text(reason, "the reason a subject is on the watchlist")
    ids = _subject_ids(s, subjects)
    present = set(
        s.scalars(select(WatchlistMember.subject_id).where(WatchlistMember.watchlist_id == w.id))
    )
    added = [i for i in dict.fromkeys(ids.values()) if i not in present]
    for sid in added:
        s.add(
            WatchlistMember(
                watchlist_id=w.id, subject_id=sid, reason=reason, added_by=caller.user_id
            )
        )
    if added:
        _changed(w, caller)
    s.flush()
    return added


def remove_members(s: Session, caller: Caller, w: Watchlist, subjects: list[str]) -> list[int]:
    ids = list(_subject_ids(s, subjects).values())
    gone = list(
        s.scalars(
            delete(WatchlistMember)
            .where(WatchlistMember.watchlist_id == w.id, WatchlistMember.subject_id.in_(ids))
            .returning(WatchlistMember.subject_id)
        )
    )
    if gone:
        _changed(w, caller)
    return gone


def _changed(w: Watchlist, caller: Caller) -> None:
    """Membership changed: the old authorisation no longer covers it."""
    w.authorised_by, w.authorised_at = None, None
    w.changed_by = caller.user_id


def authorise(s: Session, caller: Caller, w: Watchlist) -> None:
    if w.expires_at <= utcnow():
        raise PolicyError(f"watchlist {w.name} has expired")
    if w.changed_by == caller.user_id:
        raise PolicyError("the person who made or last changed a watchlist cannot authorise it")
    n = s.scalar(select(func.count()).where(WatchlistMember.watchlist_id == w.id))
    if not n:
        raise PolicyError(f"watchlist {w.name} has no members")
    w.authorised_by, w.authorised_at = caller.user_id, utcnow()


def searchable_subjects(s: Session, name: str) -> tuple[Watchlist, set[int]]:
    """The watchlist and its subject ids, if it may be searched now."""
    w = get(s, name)
    state = status(w)
    if state != "authorised":
        raise PolicyError(f"watchlist {name} cannot be searched: it is {state}")
    ids = set(
        s.scalars(select(WatchlistMember.subject_id).where(WatchlistMember.watchlist_id == w.id))
    )
    return w, ids


def info(s: Session, w: Watchlist) -> WatchlistInfo:
    rows = s.execute(
        select(WatchlistMember, Subject.name)
        .join(Subject, Subject.id == WatchlistMember.subject_id)
        .where(WatchlistMember.watchlist_id == w.id)
        .order_by(Subject.name)
    ).all()
    user_ids = {w.created_by, w.authorised_by} | {m.added_by for m, _ in rows}
    names = dict(s.execute(select(User.id, User.name).where(User.id.in_(user_ids))).all())
    return WatchlistInfo(
        name=w.name,
        purpose=w.purpose,
        created_by=names[w.created_by],
        created_at=w.created_at,
        expires_at=w.expires_at,
        authorised_by=names.get(w.authorised_by) if w.authorised_by else None,
        authorised_at=w.authorised_at,
        status=status(w),
        members=[MemberInfo(n, m.reason, names[m.added_by], m.added_at) for m, n in rows],
    )


def all_watchlists(s: Session) -> list[Watchlist]:
    return list(s.scalars(select(Watchlist).order_by(Watchlist.name)))
