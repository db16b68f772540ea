"""Cases, their members, and authorisers' approvals within them.

A case names the purpose and legal basis of the searches made in it. Investigators see and
use only the cases they are members of (whoever opens a case is one); authorisers and
auditors see all. An approval lets the case's searches go beyond what policy allows alone
(the whole gallery, or below the threshold floor) until it expires, and never counts for
the authoriser who gave it: nobody approves their own search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facetrail.errors import InvalidInputError, NotFoundError, PolicyError
from facetrail.service.access import SEES_ALL_CASES, Caller
from facetrail.service.tables import Approval, Case, CaseMember, Search, User
from facetrail.store.models import utcnow

_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9/._:-]{0,99}")
SCOPES = ("gallery", "below-floor")


@dataclass(frozen=True)
class ApprovalInfo:
    id: int
    scope: str
    min_threshold: float | None
    reason: str
    approved_by: str
    approved_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class CaseInfo:
    reference: str
    purpose: str
    legal_basis: str
    second_review: bool
    opened_by: str
    opened_at: datetime
    closed_at: datetime | None
    members: list[str]
    searches: int
    approvals: list[ApprovalInfo]

    @property
    def open(self) -> bool:
        return self.closed_at is None


def check_text(value: object, what: str, max_len: int = 1000) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} is required")
    if len(value) > max_len:
        raise InvalidInputError(f"{what} is longer than {max_len} characters")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise InvalidInputError(f"{what} must not contain control characters")
    return value.strip()


def _names(s: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    return dict(s.execute(select(User.id, User.name).where(User.id.in_(ids))).all())


def is_member(s: Session, case: Case, user_id: int) -> bool:
    return s.get(CaseMember, (case.id, user_id)) is not None


def get_case(s: Session, caller: Caller, reference: str, *, need_open: bool = False) -> Case:
    """The case, if the caller may see it (members only for investigators and operators)."""
    case = s.scalar(select(Case).where(Case.reference == reference))
    # Outsiders are told the same as for a case that does not exist.
    if case is None or (
        caller.role not in SEES_ALL_CASES and not is_member(s, case, caller.user_id)
    ):
        raise NotFoundError(f"no case {reference!r} that you are a member of")
    if need_open and case.closed_at is not None:
        raise PolicyError(f"case {reference} is closed")
    return case


def open_case(
    s: Session, caller: Caller, reference: str, purpose: str, legal_basis: str, second: bool
) -> Case:
    if not isinstance(reference, str) or not _REFERENCE.fullmatch(reference):
        raise InvalidInputError(
            "a case reference is 1-100 letters, digits, '/', '.', '_', ':' or '-'"
        )
    if s.scalar(select(Case.id).where(Case.reference == reference)) is not None:
        raise InvalidInputError(f"case {reference} already exists")
    case = Case(
        reference=reference,
        purpose=check_text(purpose, "the purpose"),
        legal_basis=check_text(legal_basis, "the legal basis"),
        second_review=bool(second),
        opened_by=caller.user_id,
    )
    s.add(case)
    s.flush()
    s.add(CaseMember(case_id=case.id, user_id=caller.user_id, added_by=caller.user_id))
    s.flush()
    return case


def close_case(s: Session, caller: Caller, case: Case) -> None:
    if case.closed_at is not None:
        raise PolicyError(f"case {case.reference} is already closed")
    case.closed_at, case.closed_by = utcnow(), caller.user_id


def add_member(s: Session, caller: Caller, case: Case, user: User) -> None:
    if not user.active:
        raise InvalidInputError(f"the account {user.name!r} is disabled")
    if user.role not in ("investigator", "authoriser", "operator"):
        raise InvalidInputError(f"{user.name} ({user.role}) cannot be a case member")
    if not is_member(s, case, user.id):
        s.add(CaseMember(case_id=case.id, user_id=user.id, added_by=caller.user_id))
        s.flush()


def approve(
    s: Session,
    caller: Caller,
    case: Case,
    scope: str,
    reason: str,
    days: int,
    min_threshold: float | None,
) -> Approval:
    if scope not in SCOPES:
        raise InvalidInputError(f"an approval's scope is one of: {', '.join(SCOPES)}")
    if scope == "gallery" and min_threshold is not None:
        raise InvalidInputError("a threshold goes with a below-floor approval only")
    if min_threshold is not None and not -1 <= min_threshold <= 1:
        raise InvalidInputError("the threshold must be within [-1, 1]")
    now = utcnow()
    row = Approval(
        case_id=case.id,
        scope=scope,
        min_threshold=min_threshold,
        reason=check_text(reason, "the reason"),
        approved_by=caller.user_id,
        approved_at=now,
        expires_at=now + timedelta(days=days),
    )
    s.add(row)
    s.flush()
    return row


def usable_approval(
    s: Session, caller: Caller, case: Case, scope: str, threshold: float | None = None
) -> Approval | None:
    """A current approval of `scope` in the case given by someone else, if any.

    For below-floor approvals `threshold` is the wanted threshold (None: no threshold at
    all, i.e. every candidate listed), which the approval's minimum must allow.
    """
    rows = s.scalars(
        select(Approval).where(
            Approval.case_id == case.id,
            Approval.scope == scope,
            Approval.expires_at > utcnow(),
            Approval.approved_by != caller.user_id,
        )
    )
    for row in rows:
        if scope != "below-floor" or row.min_threshold is None:
            return row
        if threshold is not None and threshold >= row.min_threshold:
            return row
    return None


def visible_cases(s: Session, caller: Caller) -> list[Case]:
    stmt = select(Case).order_by(Case.id)
    if caller.role not in SEES_ALL_CASES:
        stmt = stmt.join(CaseMember, CaseMember.case_id == Case.id).where(
            CaseMember.user_id == caller.user_id
        )
    return list(s.scalars(stmt))


def case_info(s: Session, case: Case) -> CaseInfo:
    member_ids = set(s.scalars(select(CaseMember.user_id).where(CaseMember.case_id == case.id)))
    approvals = list(s.scalars(select(Approval).where(Approval.case_id == case.id)))
    names = _names(s, member_ids | {case.opened_by} | {a.approved_by for a in approvals})
    searches = s.scalar(select(func.count()).where(Search.case_id == case.id)) or 0
    return CaseInfo(
        reference=case.reference,
        purpose=case.purpose,
        legal_basis=case.legal_basis,
        second_review=case.second_review,
        opened_by=names[case.opened_by],
        opened_at=case.opened_at,
        closed_at=case.closed_at,
        members=sorted(names[i] for i in member_ids),
        searches=searches,
        approvals=[
            ApprovalInfo(
                a.id,
                a.scope,
                a.min_threshold,
                a.reason,
                names[a.approved_by],
                a.approved_at,
                a.expires_at,
            )
            for a in approvals
        ],
    )
