"""The audit trail: append-only events, each chained to the one before by SHA-256.

An event's hash covers its own fields (sequence number and time included) and the previous
event's hash, so editing, deleting, inserting or reordering a row breaks the chain at that
point. The sequence number of the newest event is also kept in `store_state`, so cutting
events off the end is caught too (unless the same hand edits that row as well: the export,
kept outside, is the answer to that). Appending happens inside the caller's write transaction,
so an action and its event commit together or not at all.

The chain stays one chain with many writers: on SQLite a write transaction holds the
database's write lock from its start; on PostgreSQL, where many processes share the database,
appending first takes a transaction-level advisory lock (besides the store's own write lock),
so two transactions never both read the same last event and chain onto it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from facetrail.errors import InvalidInputError, StoreError
from facetrail.store.models import AuditEvent, StoreState, utcnow

GENESIS = "0" * 64
HEAD_KEY = "audit_head"
# The PostgreSQL advisory lock held from an append to the end of its transaction.
PG_AUDIT_LOCK = 0x6661_6365_7472_0002


@dataclass(frozen=True)
class AuditRecord:
    """What happened: who did which action to which objects, and why. No biometric data."""

    actor: str
    action: str
    object_type: str | None = None
    object_ids: list[Any] = field(default_factory=list)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    role: str | None = None
    case: str | None = None  # the case reference the action belongs to, if any


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_broken: int | None = None  # sequence number of the first event that fails
    problem: str | None = None


def _digest(prev_hash: str, seq: int, at: datetime, record: AuditRecord) -> str:
    body = {
        "seq": seq,
        "at": at.isoformat(),
        "actor": record.actor,
        "action": record.action,
        "object_type": record.object_type,
        "object_ids": record.object_ids,
        "reason": record.reason,
        "details": record.details,
    }
    # Events written before roles and cases existed hash without these keys.
    if record.role is not None:
        body["role"] = record.role
    if record.case is not None:
        body["case"] = record.case
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _head(s: Session) -> int:
    value = s.scalar(select(StoreState.value).where(StoreState.key == HEAD_KEY))
    return int(value) if value is not None else 0


def append(s: Session, record: AuditRecord) -> int:
    """Add `record` to the chain in the caller's (write) transaction; returns its sequence."""
    if not record.actor or not record.action:
        raise InvalidInputError("an audit event needs an actor and an action")
    try:
        json.dumps([record.object_ids, record.details])
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("audit event fields must be plain JSON values") from exc
    if s.get_bind().dialect.name == "postgresql":
        # Whoever holds it has read the newest event; the next appender waits until that
        # transaction ends, and (READ COMMITTED) then reads the event it committed.
        s.execute(select(func.pg_advisory_xact_lock(PG_AUDIT_LOCK)))
    last = s.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    at = utcnow()
    s.add(
        AuditEvent(
            seq=seq,
            at=at,
            actor=record.actor,
            role=record.role,
            action=record.action,
            case_ref=record.case,
            object_type=record.object_type,
            object_ids=list(record.object_ids),
            reason=record.reason,
            details=dict(record.details),
            prev_hash=prev,
            hash=_digest(prev, seq, at, record),
        )
    )
    if (
        s.execute(update(StoreState).where(StoreState.key == HEAD_KEY).values(value=seq)).rowcount
        == 0
    ):  # type: ignore[attr-defined]
        s.add(StoreState(key=HEAD_KEY, value=seq))
    s.flush()
    return seq


def _record(row: AuditEvent) -> AuditRecord:
    return AuditRecord(
        row.actor,
        row.action,
        row.object_type,
        row.object_ids,
        row.reason,
        row.details,
        row.role,
        row.case_ref,
    )


def verify(s: Session) -> ChainReport:
    """Walk the whole chain; the first event whose link or hash does not hold is named."""
    prev, expected, count = GENESIS, 1, 0
    for row in s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).yield_per(1000):
        if row.seq != expected:
            return ChainReport(False, count, expected, f"event {expected} is missing")
        if row.prev_hash != prev:
            return ChainReport(False, count, row.seq, "does not follow the event before it")
        if _digest(prev, row.seq, row.at, _record(row)) != row.hash:
            return ChainReport(False, count, row.seq, "its content does not match its hash")
        prev, expected, count = row.hash, expected + 1, count + 1
    head = _head(s)
    if head != count:
        problem = f"the trail ends at event {count} but {head} were recorded"
        return ChainReport(False, count, count + 1, problem)
    return ChainReport(True, count)


def export(
    s: Session,
    since: datetime | None = None,
    *,
    actions: tuple[str, ...] = (),
    case: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Events (oldest first) as plain dicts, for JSON lines kept outside the system."""
    stmt = select(AuditEvent).order_by(AuditEvent.seq)
    if actions:
        stmt = stmt.where(AuditEvent.action.in_(actions))
    if case is not None:
        stmt = stmt.where(AuditEvent.case_ref == case)
    if since is not None:
        if since.tzinfo is None:
            raise StoreError("--since needs a time zone (e.g. 2026-11-26T00:00:00+00:00)")
        stmt = stmt.where(AuditEvent.at >= since)
    for row in s.scalars(stmt).yield_per(1000):
        yield _as_dict(row)


def page(
    s: Session,
    *,
    offset: int,
    limit: int,
    action: str | None = None,
    actor: str | None = None,
    case: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One page of events, newest first, filtered in the database, and how many match."""
    where = []
    if action:
        where.append(AuditEvent.action == action)
    if actor:
        where.append(AuditEvent.actor == actor)
    if case:
        where.append(AuditEvent.case_ref == case)
    total = int(s.scalar(select(func.count()).select_from(AuditEvent).where(*where)) or 0)
    stmt = (
        select(AuditEvent).where(*where).order_by(AuditEvent.seq.desc()).offset(offset).limit(limit)
    )
    return [_as_dict(row) for row in s.scalars(stmt)], total


def actions(s: Session) -> list[str]:
    """Every action the trail holds, for a filter's choices."""
    return sorted(s.scalars(select(AuditEvent.action).distinct()))


def _as_dict(row: AuditEvent) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "role": row.role,
        "action": row.action,
        "case": row.case_ref,
        "object_type": row.object_type,
        "object_ids": row.object_ids,
        "reason": row.reason,
        "details": row.details,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }
