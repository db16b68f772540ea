"""Retention: deleting what policy says may no longer be kept, and showing what is due.

Two kinds of data fall due here (the third, probe faces that matched nothing, never outlives
its search: see `service.review`):
- a search's probe files, probe faces, candidates and decisions, `probe_retention_days`
  after its case closed: the rows go, the search row stays with its counts and `purged_at`;
- a subject at its review date (`review_at`, or `subject_review_days` after enrolment),
  unless an authoriser renewed it: erased completely, as `facetrail erase` does.

Live alerts (rows and best shots) go `alert_retention_hours` after they were raised; their
deployment keeps its counts.

Each deletion and its audit event commit together; blob files follow after the commit (the
store's sweep), and the report says what went from the database and from the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from facetrail.service.policy import Policy
from facetrail.service.tables import Alert, Case, ProbeMedia, Search
from facetrail.store.models import Subject, utcnow


@dataclass(frozen=True)
class DueSearch:
    search_id: int
    case: str
    case_closed_at: datetime
    due_at: datetime


@dataclass(frozen=True)
class DueSubject:
    subject_id: int
    subject: str
    due_at: datetime
    renewed: bool  # an authoriser set its review date


@dataclass(frozen=True)
class DueAlerts:
    """A live deployment's alerts that fall due, with when the first and last go."""

    deployment: int
    alerts: int
    first_due_at: datetime
    last_due_at: datetime


@dataclass
class RetentionRun:
    at: datetime
    searches_purged: list[int] = field(default_factory=list)
    probe_files: int = 0
    subjects_erased: list[str] = field(default_factory=list)
    alerts_purged: int = 0
    blobs_deleted: int | None = None  # files removed from disk after the commit


@dataclass(frozen=True)
class RetentionReport:
    policy: dict
    deleted: list[dict]  # the retention events of the audit trail (what went, when)
    due: list[DueSearch | DueSubject | DueAlerts]  # what falls due within the horizon


def due_searches(s: Session, policy: Policy, until: datetime) -> list[DueSearch]:
    keep = timedelta(days=policy.probe_retention_days)
    rows = s.execute(
        select(Search.id, Case.reference, Case.closed_at)
        .join(Case, Case.id == Search.case_id)
        .where(
            Case.closed_at.is_not(None),
            Case.closed_at <= until - keep,
            Search.purged_at.is_(None),
        )
        .order_by(Search.id)
    ).all()
    return [DueSearch(i, ref, closed, closed + keep) for i, ref, closed in rows]


def due_alert_groups(s: Session, policy: Policy, until: datetime) -> list[DueAlerts]:
    keep = timedelta(hours=policy.alert_retention_hours)
    rows = s.execute(
        select(Alert.deployment_id, func.count(), func.min(Alert.at), func.max(Alert.at))
        .where(Alert.at <= until - keep)
        .group_by(Alert.deployment_id)
        .order_by(Alert.deployment_id)
    ).all()
    return [DueAlerts(d, n, _utc(first) + keep, _utc(last) + keep) for d, n, first, last in rows]


def _utc(value: datetime) -> datetime:
    """Aggregates come back without the column type's zone handling on SQLite."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def due_subjects(s: Session, policy: Policy, until: datetime) -> list[DueSubject]:
    period = timedelta(days=policy.subject_review_days)
    # Candidates by the stored date first, then by enrolment date where none is stored;
    # both bounded in SQL so this stays an index-sized query on a large gallery.
    renewed = s.execute(
        select(Subject.id, Subject.name, Subject.review_at).where(
            Subject.review_at.is_not(None), Subject.review_at <= until
        )
    ).all()
    default = s.execute(
        select(Subject.id, Subject.name, Subject.created_at).where(
            Subject.review_at.is_(None), Subject.created_at <= until - period
        )
    ).all()
    out = [DueSubject(i, n, at, True) for i, n, at in renewed]
    out += [DueSubject(i, n, at + period, False) for i, n, at in default]
    return sorted(out, key=lambda d: (d.due_at, d.subject_id))


def purge_search(s: Session, search_id: int) -> int:
    """Delete a search's probe files, faces, candidates and decisions (rows); keep its
    counts. Returns how many probe files it had."""
    n = s.scalar(select(func.count()).where(ProbeMedia.search_id == search_id)) or 0
    s.execute(delete(ProbeMedia).where(ProbeMedia.search_id == search_id))
    row = s.get(Search, search_id)
    assert row is not None
    row.purged_at = utcnow()
    return int(n)


def subject_review_at(subject: Subject, policy: Policy) -> datetime:
    if subject.review_at is not None:
        return subject.review_at
    return subject.created_at + timedelta(days=policy.subject_review_days)


def due_alerts(s: Session, policy: Policy, until: datetime) -> list[int]:
    """Ids of the live alerts past their retention period at `until`."""
    cutoff = until - timedelta(hours=policy.alert_retention_hours)
    return list(s.scalars(select(Alert.id).where(Alert.at <= cutoff).order_by(Alert.id)))


def purge_alerts(s: Session, ids: list[int]) -> int:
    """Delete these alerts (their best shots go with the next blob sweep)."""
    for start in range(0, len(ids), 500):
        s.execute(delete(Alert).where(Alert.id.in_(ids[start : start + 500])))
    return len(ids)
