"""Who may do what: the roles, the operations, and the one table that joins them.

Every use case starts by asking `require(caller, Op.X)`; the front doors never decide. The
table is also the documentation (README, "Roles"), and tests/test_access.py walks every
operation as every role against its own copy of that documented table.

Duties are separated on purpose: an administrator runs the system (users, policy, gallery,
retention) but does not search; an authoriser approves what an investigator may not do
alone and cannot approve their own requests; an auditor reads everything about what was
done and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from facetrail.errors import AuthenticationError, PermissionDeniedError


class Role(StrEnum):
    ADMIN = "admin"
    AUTHORISER = "authoriser"
    INVESTIGATOR = "investigator"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Op(StrEnum):
    USERS = "users.manage"  # add, disable, change role, reset password, list
    POLICY_READ = "policy.read"
    POLICY_CHANGE = "policy.change"
    ENROL = "gallery.enrol"
    GALLERY_READ = "gallery.read"  # list subjects, show one
    ERASE = "gallery.erase"
    EXPORT = "gallery.export"  # write every template of a model to a file (a migration)
    RENEW = "subject.renew"  # keep a subject past its review date
    CASE_OPEN = "case.open"
    CASE_READ = "case.read"  # investigators: only cases they are members of
    CASE_MANAGE = "case.manage"  # close, add members
    APPROVE = "search.approve"  # gallery-wide or below-floor searches in a case
    WATCHLIST_READ = "watchlist.read"
    WATCHLIST_EDIT = "watchlist.edit"  # create, add or remove members (withdraws authorisation)
    WATCHLIST_AUTHORISE = "watchlist.authorise"
    SEARCH = "search"  # 1:N, in a case
    VERIFY = "verify"  # 1:1, in a case
    REVIEW_READ = "review.read"  # see a search's candidates
    DECIDE = "review.decide"  # record or confirm a decision on a candidate
    AUDIT = "audit.read"  # verify and export the trail
    RETENTION_RUN = "retention.run"
    RETENTION_REPORT = "retention.report"
    EVALUATE = "evaluate"  # LFW and calibration
    STORAGE = "storage.manage"  # encrypt what was stored before a key was configured
    LIVE_DEPLOY = "live.deploy"  # start and stop a live deployment on an authorised watchlist
    LIVE_READ = "live.read"  # see deployments, their alerts and the transparency report
    ALERT_REVIEW = "alert.review"  # mark a live alert confirmed or false, with the action
    CASE_REPORT = "case.report"  # a case's report: inputs, candidates' crops, decisions, audit
    TRANSPARENCY = "report.transparency"  # a period's aggregate figures, for publication


ADM, AUT, INV, OPS, AUD = (
    Role.ADMIN,
    Role.AUTHORISER,
    Role.INVESTIGATOR,
    Role.OPERATOR,
    Role.AUDITOR,
)

PERMISSIONS: dict[Op, frozenset[Role]] = {
    Op.USERS: frozenset({ADM}),
    Op.POLICY_READ: frozenset({ADM, AUT, INV, OPS, AUD}),
    Op.POLICY_CHANGE: frozenset({ADM}),
    Op.ENROL: frozenset({ADM}),
    Op.GALLERY_READ: frozenset({ADM, AUT, INV, OPS, AUD}),
    Op.ERASE: frozenset({ADM}),
    # The whole gallery's biometric templates leave the system: the administrator who could
    # enrol them, no one else; audited with counts and the file's hash.
    Op.EXPORT: frozenset({ADM}),
    Op.RENEW: frozenset({AUT}),
    Op.CASE_OPEN: frozenset({AUT, INV}),
    Op.CASE_READ: frozenset({AUT, INV, AUD}),
    Op.CASE_MANAGE: frozenset({AUT, INV}),
    Op.APPROVE: frozenset({AUT}),
    Op.WATCHLIST_READ: frozenset({AUT, INV, OPS, AUD}),
    Op.WATCHLIST_EDIT: frozenset({AUT, INV}),
    Op.WATCHLIST_AUTHORISE: frozenset({AUT}),
    Op.SEARCH: frozenset({AUT, INV}),
    Op.VERIFY: frozenset({AUT, INV}),
    Op.REVIEW_READ: frozenset({AUT, INV, OPS, AUD}),
    Op.DECIDE: frozenset({AUT, INV, OPS}),
    Op.AUDIT: frozenset({ADM, AUD}),
    Op.RETENTION_RUN: frozenset({ADM}),
    Op.RETENTION_REPORT: frozenset({ADM, AUD}),
    Op.EVALUATE: frozenset({ADM, AUD}),
    Op.STORAGE: frozenset({ADM}),
    # The watchlist itself needs an authoriser's authorisation; running it is the live
    # operator's job (and an authoriser's), not an investigator's.
    Op.LIVE_DEPLOY: frozenset({AUT, OPS}),
    Op.LIVE_READ: frozenset({AUT, OPS, AUD}),
    Op.ALERT_REVIEW: frozenset({AUT, OPS}),
    # A case report is the case file for disclosure: whoever may read the case (investigators
    # only their own) may have it, the case's own audit events included.
    Op.CASE_REPORT: frozenset({AUT, INV, AUD}),
    # Aggregate figures, no names or faces: for those who answer for the system's use.
    Op.TRANSPARENCY: frozenset({ADM, AUT, AUD}),
}

# Roles that see every case; the others see the cases they are members of.
SEES_ALL_CASES: frozenset[Role] = frozenset({AUT, AUD})


@dataclass(frozen=True)
class Caller:
    """The authenticated user an action is done for."""

    user_id: int
    name: str
    role: Role
    token_id: int | None = None


# The identity of work the service does by itself (retention on start).
SYSTEM = Caller(0, "system", Role.ADMIN)


def allowed(role: Role, op: Op) -> bool:
    return role in PERMISSIONS[op]


def authenticated(caller: Caller | None) -> Caller:
    """The caller, whatever their role (their own account and tokens); refused if none."""
    if caller is None:
        raise AuthenticationError(
            "not logged in: run `facetrail login NAME` (or `facetrail init` on a new data "
            "directory), or give a token with --token / FACETRAIL_TOKEN"
        )
    return caller


def require(caller: Caller | None, op: Op) -> Caller:
    """The caller, if their role allows `op`; otherwise a clear refusal."""
    caller = authenticated(caller)
    if not allowed(caller.role, op):
        roles = ", ".join(sorted(PERMISSIONS[op]))
        raise PermissionDeniedError(
            f"{caller.name} ({caller.role}) may not {op.value}; it needs the role {roles}"
        )
    return caller
